// The command line dockerd gives its userland proxy, parsed the way Go's `flag` package does:
// `-name value`, `-name=value`, `--name value`, any order, the last repetition wins, `--` or the
// first non-flag argument ends the flags, boolean flags take no separate value (`-use-listen-fd`,
// `-use-listen-fd=true`). Unlike docker-proxy, every one of the five flags is required (dockerd
// always passes them; a default container IP of 0.0.0.0 would dial this host), ports are decimal
// only, and arguments left after the flags are an error. Pure: no sockets, no files.
import type { Protocol } from '../api.js';
import { canonicalIP, isUnspecified } from '../addr.js';
import { PortferryError } from '../errors.js';

export interface DockerProxyArgs {
  readonly protocol: Protocol;
  readonly hostIP: string;
  readonly hostPort: number;
  readonly containerIP: string;
  readonly containerPort: number;
  /** dockerd ≥ 28: fd 4 is the socket it created (TCP listening, UDP bound); adopt it, bind nothing. */
  readonly useListenFd: boolean;
}

export type ParsedArgv = { readonly kind: 'run'; readonly args: DockerProxyArgs } | { readonly kind: 'help' } | { readonly kind: 'version' };

const VALUE_FLAGS = ['proto', 'host-ip', 'host-port', 'container-ip', 'container-port'] as const;
const BOOL_FLAGS = ['use-listen-fd', 'v', 'version'] as const;
type ValueFlag = (typeof VALUE_FLAGS)[number];

export const USAGE = `usage: portferry-docker-proxy -proto tcp|udp -host-ip IP -host-port PORT -container-ip IP -container-port PORT [-use-listen-fd]
A drop-in for docker-proxy: set "userland-proxy-path" in /etc/docker/daemon.json to this program's
absolute path. Settings dockerd cannot pass are read from $PORTFERRY_DOCKER_CONFIG
(default /etc/portferry/docker-proxy.yaml). See docs/docker.md.`;

const usage = (message: string): PortferryError =>
  new PortferryError('PF_USAGE', message, { hint: `dockerd runs this program as: ${USAGE.split('\n')[0]?.replace('usage: ', '')}` });

/** Go's strconv.ParseBool. */
function parseBool(text: string): boolean | null {
  if (['1', 't', 'T', 'TRUE', 'true', 'True'].includes(text)) return true;
  if (['0', 'f', 'F', 'FALSE', 'false', 'False'].includes(text)) return false;
  return null;
}

/**
 * Parses argv (without the program name). Throws a PortferryError (PF_USAGE, PF_PROTOCOL_INVALID,
 * PF_PORT_INVALID, PF_IP_INVALID; several problems → PF_USAGE listing each).
 */
export function parseDockerProxyArgv(argv: readonly string[]): ParsedArgv {
  const values = new Map<ValueFlag, string>();
  let useListenFd = false;
  let version = false;
  let rest = [...argv];
  while (rest.length > 0) {
    const arg = rest[0] as string;
    if (arg.length < 2 || !arg.startsWith('-')) break;
    const dashes = arg.startsWith('--') ? 2 : 1;
    if (arg === '--') {
      rest = rest.slice(1);
      break;
    }
    let name = arg.slice(dashes);
    if (name === '' || name.startsWith('-') || name.startsWith('=')) throw usage(`bad flag syntax: ${arg}`);
    rest = rest.slice(1);
    let value: string | undefined;
    const eq = name.indexOf('=');
    if (eq > 0) {
      value = name.slice(eq + 1);
      name = name.slice(0, eq);
    }
    if (name === 'h' || name === 'help') return { kind: 'help' };
    if ((BOOL_FLAGS as readonly string[]).includes(name)) {
      const on = value === undefined ? true : parseBool(value);
      if (on === null) throw usage(`invalid boolean value "${value}" for -${name}: use true or false`);
      if (name === 'use-listen-fd') useListenFd = on;
      else version = on;
      continue;
    }
    if (!(VALUE_FLAGS as readonly string[]).includes(name)) throw usage(`flag provided but not defined: -${name}`);
    if (value === undefined) {
      if (rest.length === 0) throw usage(`flag needs an argument: -${name}`);
      value = rest[0] as string;
      rest = rest.slice(1);
    }
    values.set(name as ValueFlag, value);
  }
  if (version) return { kind: 'version' };

  const problems: PortferryError[] = [];
  if (rest.length > 0) problems.push(usage(`unexpected argument${rest.length > 1 ? 's' : ''} after the flags: ${rest.map((a) => JSON.stringify(a)).join(' ')}`));
  const absent = VALUE_FLAGS.filter((flag) => !values.has(flag));
  if (absent.length > 0) problems.push(usage(`missing ${absent.map((f) => `-${f}`).join(', ')}: dockerd always passes -proto, -host-ip, -host-port, -container-ip and -container-port`));

  const proto = values.get('proto');
  let protocol: Protocol = 'tcp';
  if (proto === 'tcp' || proto === 'udp') protocol = proto;
  else if (proto === 'sctp') {
    problems.push(
      new PortferryError('PF_PROTOCOL_INVALID', '-proto sctp: portferry forwards tcp and udp only (Node.js has no SCTP sockets)', {
        hint: 'Publish SCTP ports on a daemon that keeps docker-proxy, or without the userland proxy (iptables DNAT); tcp and udp ports are unaffected.',
      }),
    );
  } else if (proto !== undefined) problems.push(new PortferryError('PF_PROTOCOL_INVALID', `-proto ${JSON.stringify(proto)}: use tcp or udp`));

  const ip = (flag: 'host-ip' | 'container-ip'): string => {
    const text = values.get(flag);
    if (text === undefined) return '';
    const canonical = canonicalIP(text);
    if (canonical === null) problems.push(new PortferryError('PF_IP_INVALID', `-${flag} ${JSON.stringify(text)} is not an IPv4 or IPv6 address`));
    else if (flag === 'container-ip' && isUnspecified(canonical)) {
      problems.push(new PortferryError('PF_IP_INVALID', `-container-ip ${canonical} is not an address one can connect to: give the container's address`));
    } else return canonical;
    return '';
  };
  const port = (flag: 'host-port' | 'container-port'): number => {
    const text = values.get(flag);
    if (text === undefined) return 0;
    const n = /^\d{1,5}$/.test(text) ? Number(text) : NaN;
    if (!(n >= 1 && n <= 65535)) problems.push(new PortferryError('PF_PORT_INVALID', `-${flag} ${JSON.stringify(text)} is not a port from 1 to 65535`));
    return n;
  };
  const args: DockerProxyArgs = {
    protocol,
    hostIP: ip('host-ip'),
    hostPort: port('host-port'),
    containerIP: ip('container-ip'),
    containerPort: port('container-port'),
    useListenFd,
  };
  if (problems.length === 1) throw problems[0] as PortferryError;
  if (problems.length > 1) {
    throw new PortferryError('PF_USAGE', `the arguments have ${problems.length} problems; nothing was started`, { problems, hint: (problems[0] as PortferryError).hint });
  }
  return { kind: 'run', args };
}

