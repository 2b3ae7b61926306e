// The error catalogue. Every error a user can see has a stable code, a message with the facts
// (address, port, file, timeout), and a hint that says what to do. docs/errors.md lists the same
// codes (test/unit/errors-doc.test.ts keeps the two in sync).

export interface CatalogueEntry {
  /** What happened, in one line (the "Meaning" column of docs/errors.md). */
  readonly meaning: string;
  /** The default hint: what to do about it (the "How to fix" column). */
  readonly fix: string;
}

export const CATALOGUE = {
  // -- configuration (src/config) --
  PF_CONFIG_INVALID: {
    meaning: 'The configuration has one or more problems; each is listed below it and nothing was started.',
    fix: 'Fix every listed problem, then run `portferry validate` with the same arguments until it passes.',
  },
  PF_SPEC_SYNTAX: {
    meaning: 'A `-p` port spec does not have the form `[hostIP:]hostPort[-end]:containerIP:containerPort[-end][/tcp|/udp]`.',
    fix: 'Write the spec as e.g. `8080:10.88.0.2:80`, `127.0.0.1:5353:10.88.0.2:53/udp` or `[::1]:8443:[fd00::2]:443` (IPv6 in brackets).',
  },
  PF_PORT_INVALID: {
    meaning: 'A port is not a whole number from 1 to 65535.',
    fix: 'Use a port from 1 to 65535; 0 (pick any) is not allowed for a published port.',
  },
  PF_PORT_RANGE: {
    meaning: 'A port range is malformed: its end is below its start, or the host and container ranges differ in length.',
    fix: 'Write ranges as `start-end` with start <= end, and give the host and container ranges the same length (or a single container port only with a single host port).',
  },
  PF_IP_INVALID: {
    meaning: 'An IP address is not a valid IPv4 or IPv6 address, or cannot serve where it stands (an IPv4-mapped `::ffff:a.b.c.d`; a broadcast, multicast or unspecified container IP).',
    fix: 'Write a literal address (no host names): `127.0.0.1`, `0.0.0.0`, `::1`, `fd00::2`; IPv6 inside brackets in a `-p` spec; an IPv4 address as itself, not as `::ffff:…`.',
  },
  PF_PROTOCOL_INVALID: {
    meaning: 'A protocol other than tcp or udp was given.',
    fix: 'Use `tcp` or `udp` (`/tcp`, `/udp` at the end of a spec).',
  },
  PF_DURATION_INVALID: {
    meaning: 'A duration is not of the form `500ms`, `5s`, `2m`, `1h`, or is out of bounds.',
    fix: 'Write a positive number followed by ms, s, m or h, e.g. `5s`; use `0` only where the option says it means "no limit".',
  },
  PF_CONFIG_VALUE: {
    meaning: 'A configuration value has the wrong type or is out of its allowed range.',
    fix: 'Give the value the type and range named in the message (see the README for every key).',
  },
  PF_CONFIG_KEY: {
    meaning: 'The configuration file has a key portferry does not know (often a typo).',
    fix: 'Remove the key or correct its spelling; the message lists the keys allowed at that place.',
  },
  PF_CONFIG_MISSING: {
    meaning: 'A required key is missing from a mapping.',
    fix: 'Add the key named in the message; every mapping needs hostPort, containerIP and containerPort.',
  },
  PF_CONFIG_READ: {
    meaning: 'The configuration file could not be read.',
    fix: 'Check that the path given with -c exists and is readable by the user running portferry.',
  },
  PF_CONFIG_NOT_FILE: {
    meaning: 'The configuration path is not a regular file (a FIFO, a device such as /dev/zero, a socket or a directory); it was not read.',
    fix: 'Give -c the path of a regular file; to feed a generated config, write it to a file first.',
  },
  PF_CONFIG_TOO_LARGE: {
    meaning: 'The configuration file is larger than the maximum of 1 MiB; it was not read.',
    fix: 'Check that -c names the right file; split a huge set of mappings over several portferry processes.',
  },
  PF_CONFIG_PARSE: {
    meaning: 'The configuration file is not valid YAML (or JSON).',
    fix: 'Fix the syntax at the line and column named in the message.',
  },
  PF_CONFIG_REPEATED: {
    meaning: 'The same configuration file is given twice with -c (several different files are merged).',
    fix: 'Give each file once; to serve its mappings twice, copy them under other names and host ports.',
  },
  PF_CONFLICT: {
    meaning: 'Two mappings claim the same host address, port and protocol.',
    fix: 'Give each mapping its own host port, or distinct host IPs; a port without host IP covers 0.0.0.0 and :: and so overlaps every address of both families.',
  },
  PF_NAME_DUPLICATE: {
    meaning: 'Two mappings have the same name (a name is how a mapping is listed, removed and logged), also across several `-c` files (the message names both places).',
    fix: 'Give each mapping its own `name`, or leave `name` out to get one derived from the protocol, host IP and port.',
  },
  PF_LISTENER_LIMIT: {
    meaning: 'The mappings need more listeners (host addresses × host ports) than the maximum of 4096 per process.',
    fix: 'Publish fewer or shorter port ranges, give a host IP (a mapping without one listens on 0.0.0.0 and :: and counts twice), or split the mappings over several processes.',
  },
  PF_NO_MAPPINGS: {
    meaning: 'No mapping was given.',
    fix: 'Give at least one `-p SPEC` or a `-c FILE` whose `mappings` list is not empty.',
  },
  PF_NETNS_INVALID: {
    meaning: 'A `netns` path does not exist or is not a network namespace.',
    fix: 'Give the path of a network namespace: `/proc/<pid>/ns/net` of a process inside the container, or `/run/netns/<name>`.',
  },
  PF_USAGE: {
    meaning: 'The command line is not valid (an unknown option or command, a missing or malformed argument); exit code 2.',
    fix: 'Run `portferry <command> --help` for the options.',
  },

  // -- binding and serving (src/proxy) --
  PF_BIND_ADDRINUSE: {
    meaning: 'The host address and port of a mapping is already in use by another socket.',
    fix: "Stop whatever holds the port (`ss -lntup 'sport = :PORT'` shows it) or choose another host port.",
  },
  PF_BIND_EACCES: {
    meaning: 'The host port is below net.ipv4.ip_unprivileged_port_start and portferry is not privileged.',
    fix: 'Use a port at or above the value named in the message, or lower it: `sysctl -w net.ipv4.ip_unprivileged_port_start=PORT`, or grant CAP_NET_BIND_SERVICE.',
  },
  PF_BIND_ADDRNOTAVAIL: {
    meaning: 'The host IP is not an address of this host (or of this network namespace).',
    fix: 'Use an address shown by `ip addr`, or leave the host IP out to listen on every address.',
  },
  PF_BIND_FAILED: {
    meaning: 'Binding a host address and port failed for another reason.',
    fix: 'Read the system error in the message; check the address family is enabled (IPv6 may be disabled) and the descriptor limit (`ulimit -n`).',
  },
  PF_DIAL_TIMEOUT: {
    meaning: 'Connecting to the container did not complete within connectTimeout.',
    fix: 'Check the container is running and reachable from the host (or from its netns), or raise connectTimeout.',
  },
  PF_DIAL_FAILED: {
    meaning: 'Connecting to the container failed (refused, unreachable), or no descriptor was left here to dial it (EMFILE, ENFILE).',
    fix: 'Check the container listens on the container port and that its IP is right; the client was disconnected and the listener keeps serving.',
  },
  PF_WORKER: {
    meaning: 'A worker process of `run --workers` failed to start or to bind its listeners.',
    fix: 'Read the error it reported (it names the mapping and address); run with --workers 1 to see it in a single process.',
  },
  PF_LISTEN_FD: {
    meaning: 'portferry-docker-proxy was given -use-listen-fd, but the socket on fd 4 is missing, of the wrong kind or bound elsewhere.',
    fix: 'Only dockerd (28 or newer) passes -use-listen-fd, with its socket on fd 4; a program that starts the proxy by hand leaves the flag out.',
  },
  PF_NETNS_HELPER: {
    meaning: 'The helper process inside a network namespace could not be started or failed.',
    fix: 'Check `nsenter` is installed and that portferry may enter the namespace (root, or the owner of the user namespace); portferry restarts the helper on the next connection.',
  },

  // -- PROXY protocol (src/proxy/proxy-header.ts) --
  PF_PROXY_HEADER: {
    meaning: 'A PROXY protocol header could not be built for a connection or datagram.',
    fix: 'Check the mapping\'s proxyProtocol options; v1 carries only TCP over IPv4/IPv6, use v2 for UDP.',
  },

  // -- metrics and the state file (src/control/metrics.ts, src/control/state.ts) --
  PF_METRICS_ADDRESS: {
    meaning: 'The `--metrics` address is not `HOST:PORT` with a literal IP address and a port from 0 to 65535.',
    fix: 'Write e.g. `127.0.0.1:9464`, `[::1]:9464`, or `0.0.0.0:9464` to serve every address (IPv6 in brackets; port 0 picks a free port, logged at start).',
  },
  PF_STATE_DIR: {
    meaning: 'The directory of the `--state` file does not exist or is not a directory.',
    fix: 'Create it (`mkdir -p -m 0700 DIR`) or give `--state` a path in an existing directory.',
  },
  PF_STATE_READ: {
    meaning: 'The `--state` file exists but could not be read; portferry did not start and left the file as it was.',
    fix: 'Check its permissions (portferry writes it 0600, readable by the user that runs it) and that it is a regular file.',
  },
  PF_STATE_PARSE: {
    meaning: 'The `--state` file is not valid JSON (truncated or edited by hand); portferry did not start and left the file as it was.',
    fix: 'Restore the file from a backup or repair it; to start without the runtime mappings it kept, move it aside (`mv FILE FILE.bad`) and start again.',
  },
  PF_STATE_INVALID: {
    meaning: 'The `--state` file is JSON but not a portferry state (wrong version or shape, or a mapping that no longer validates); portferry did not start and left the file as it was.',
    fix: 'Fix what the message names, or move the file aside (`mv FILE FILE.bad`) to start without the runtime mappings it kept.',
  },
  PF_STATE_NOT_FILE: {
    meaning: 'The `--state` path is not a regular file (a FIFO, a device such as /dev/zero, a socket or a directory); it was not read and portferry did not start.',
    fix: 'Give `--state` the path of a regular file, or of one that does not exist yet (portferry creates it, 0600).',
  },
  PF_STATE_TOO_LARGE: {
    meaning: 'The `--state` file is larger than any state portferry writes (16 MiB); it was not read and portferry did not start. (At runtime: a change would make the state larger; it was not made.)',
    fix: 'Check that `--state` names portferry\'s state file and not another file; restore it from a backup, or move it aside to start without the runtime mappings it kept.',
  },
  PF_STATE_WRITE: {
    meaning: 'Writing the `--state` file failed; the previous state file is unchanged. At runtime the change was undone (nothing of it is bound) and the API answered 507.',
    fix: 'Read the system error in the message: check the directory is writable and the file system has space, then send the change again.',
  },
  PF_STATE_LOCKED: {
    meaning: 'Another running portferry uses the same `--state` file (the message names its pid), or the lock beside the file could not be taken; this one did not start (or, at runtime, did not save the change).',
    fix: 'Stop the other portferry first, or give this one another `--state` file; if no other portferry runs, check that the state directory is writable.',
  },

  // -- kernel rules (src/rules) --
  PF_RULES_TOOL_MISSING: {
    meaning: 'The iptables, ip6tables, nft, sysctl or conntrack command needed for kernel rules is not installed.',
    fix: 'Install it: `apt-get install -y iptables` (iptables-restore, ip6tables-restore), `nftables` (nft) or `conntrack`.',
  },
  PF_RULES_APPLY: {
    meaning: 'The kernel refused the rules; nothing of that apply remains.',
    fix: 'Read the tool output in the message; run as root (CAP_NET_ADMIN) and check the nat table modules are available.',
  },
  PF_RULES_CHECK: {
    meaning: 'Some of the expected kernel rules are missing.',
    fix: 'Run `portferry rules … --apply` with the same arguments to install them again.',
  },
  PF_RULES_BUSY: {
    meaning: 'Another portferry process kept the rules lock of this network namespace for too long.',
    fix: 'Retry; if it persists, look for a hung `portferry rules` or CNI plugin process (`ss -xlp | grep portferry-rules-lock`) and end it.',
  },

  // -- the CNI plugin (src/cni; docs/cni.md) --
  PF_CNI_ENV: {
    meaning: 'A CNI_ environment variable the command needs is missing or invalid.',
    fix: 'Run the plugin as a CNI runtime does: CNI_COMMAND, and for ADD/CHECK/DEL CNI_CONTAINERID, CNI_IFNAME (and CNI_NETNS for ADD/CHECK); the message names each bad one.',
  },
  PF_CNI_DECODE: {
    meaning: 'The network configuration on stdin is not a JSON object.',
    fix: 'Give the plugin configuration as one JSON object on stdin (the runtime does this from the conflist).',
  },
  PF_CNI_CONFIG: {
    meaning: 'The plugin configuration is not valid: a missing name, an unknown backend, a key of the wrong type, or no prevResult.',
    fix: 'Fix the keys named in the message; docs/cni.md lists every key of the portferry plugin.',
  },
  PF_CNI_VERSION: {
    meaning: 'The configuration asks for a CNI version the plugin does not speak, or a command that version lacks.',
    fix: 'Use cniVersion 0.4.0, 1.0.0 or 1.1.0 (STATUS and GC need 1.1.0).',
  },
  PF_CNI_CHECK: {
    meaning: 'CHECK found the container\'s mappings missing or not served by the daemon.',
    fix: 'Recreate the container (the runtime calls DEL then ADD), or look at the daemon\'s log; `portferry ports ls` shows what it serves.',
  },

  // -- the running forwarder and its runtime API (src/forwarder, src/control) --
  PF_SHUTTING_DOWN: {
    meaning: 'The forwarder is stopping, so it takes no new mappings.',
    fix: 'Wait until it has stopped and start it again, or send the change to the new instance.',
  },
  PF_API_REQUEST: {
    meaning: 'A runtime API request is malformed: not JSON, too large, an unknown route or method, or a body of the wrong shape.',
    fix: 'Send JSON as docs/api.md describes (`Content-Type: application/json`, at most 1 MiB); the message names what was wrong.',
  },
  PF_API_NOT_FOUND: {
    meaning: 'No mapping or port with that id exists.',
    fix: 'List what exists with `portferry ports ls` (or GET /v1/ports); ids are never reused.',
  },
  PF_API_SOCKET: {
    meaning: 'The runtime API socket could not be created, or another live portferry already serves it.',
    fix: 'Give `--api` a path in a directory portferry may create and own (mode 0700); if another instance serves that path, stop it or choose another path.',
  },
  PF_API_UNREACHABLE: {
    meaning: 'No portferry daemon answers on the runtime API socket.',
    fix: 'Start one with `portferry run --api PATH` (or check the path: `--api`, default /run/portferry/api.sock as root).',
  },
  PF_API_SOCKET_UNSAFE: {
    meaning: 'The runtime API socket\'s directory belongs to another user or can be written by other users, so someone else could put their own socket there; the daemon does not serve there and clients do not connect there.',
    fix: 'Use a directory only you (or root) own and can write to: set $XDG_RUNTIME_DIR, remove the directory (its owner or root can) so portferry creates it with mode 0700, `chmod go-w` it, or pass `--api` another path.',
  },

  // -- benchmarks and namespaces (bench, src/netns) --
  PF_NOT_ROOT: {
    meaning: 'The command needs root (to create network namespaces and rules).',
    fix: 'Run it as root, e.g. `sudo npx portferry …`.',
  },
  PF_NETNS_SETUP: {
    meaning: 'A throwaway network namespace topology could not be created (or, for `portferry bench --scenario rootless`, its throwaway user with subordinate ids).',
    fix: 'Install iproute2 (`apt-get install -y iproute2`), run as root, or for rootless mode check that unprivileged user namespaces are enabled (`sysctl user.max_user_namespaces`); for the rootless bench, check that `useradd`/`usermod` (package passwd) work here.',
  },
  PF_TOOL_MISSING: {
    meaning: 'An external tool the command needs is not installed.',
    fix: 'Install the Debian package named in the message with `apt-get install -y PACKAGE`.',
  },
} as const satisfies Record<string, CatalogueEntry>;

export type ErrorCode = keyof typeof CATALOGUE;

export interface PortferryErrorOptions {
  /** Overrides the catalogue hint with something more specific. */
  readonly hint?: string;
  readonly cause?: unknown;
  /** Facts for logs and JSON output (address, port, mapping …). */
  readonly details?: Readonly<Record<string, unknown>>;
  /** For PF_CONFIG_INVALID: every problem found. */
  readonly problems?: readonly PortferryError[];
}

export class PortferryError extends Error {
  readonly code: ErrorCode;
  readonly hint: string;
  readonly details: Readonly<Record<string, unknown>>;
  readonly problems: readonly PortferryError[];

  constructor(code: ErrorCode, message: string, options: PortferryErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'PortferryError';
    this.code = code;
    this.hint = options.hint ?? CATALOGUE[code].fix;
    this.details = options.details ?? {};
    this.problems = options.problems ?? [];
  }

  /** Human text: `CODE: message` and `hint: …`, with nested problems indented. */
  format(): string {
    const lines = [`${this.code}: ${this.message}`];
    for (const p of this.problems) {
      lines.push(`  - ${p.code}: ${p.message}`);
      lines.push(`    hint: ${p.hint}`);
    }
    if (this.problems.length === 0 || this.code !== 'PF_CONFIG_INVALID') lines.push(`  hint: ${this.hint}`);
    return lines.join('\n');
  }

  toJSON(): Record<string, unknown> {
    return {
      code: this.code,
      message: this.message,
      hint: this.hint,
      ...(Object.keys(this.details).length > 0 ? { details: this.details } : {}),
      ...(this.problems.length > 0 ? { problems: this.problems.map((p) => p.toJSON()) } : {}),
    };
  }
}

export function isPortferryError(e: unknown): e is PortferryError {
  return e instanceof PortferryError;
}

/** The errno code of a Node system error (`EADDRINUSE` …), or undefined. */
export function errnoCode(e: unknown): string | undefined {
  if (typeof e === 'object' && e !== null && 'code' in e) {
    const code = (e as { code: unknown }).code;
    if (typeof code === 'string') return code;
  }
  return undefined;
}
