// The shared vocabulary of portferry. Everything may import this module; it imports nothing.
//
// Words: a *mapping* is one configured line (`hostIP:hostPort[-end] → containerIP:containerPort[-end]
// /proto`, with options). It expands into *bindings*: one per concrete host address and host port.
// A TCP binding accepts *connections*; a UDP binding keeps *flows* (one per client address).
// A *relay* moves bytes both ways between a client socket and a container socket.

export type Protocol = 'tcp' | 'udp';
export type ProxyProtocolVersion = 'v1' | 'v2';
export type Family = 4 | 6;

/** An IP address and a port. IPv6 addresses are written without brackets. */
export interface Endpoint {
  readonly ip: string;
  readonly port: number;
}

/** Optional PROXY protocol v2 TLVs. */
export interface ProxyTlvOptions {
  /** PP2_TYPE_UNIQUE_ID: a per-connection id, also logged. */
  readonly uniqueId: boolean;
  /** PP2_TYPE_CRC32C: a CRC-32C (Castagnoli) of the whole header. */
  readonly crc32c: boolean;
}

/** One validated, normalised, frozen mapping. Durations are milliseconds; 0 means "no limit". */
export interface Mapping {
  /** Given by the user, or derived: `tcp/127.0.0.1:8080` style. */
  readonly name: string;
  readonly protocol: Protocol;
  /** `null`: unspecified, which binds both `0.0.0.0` and `::` (as Docker does). */
  readonly hostIP: string | null;
  readonly hostPort: number;
  /** Equal to hostPort for a single port. */
  readonly hostPortEnd: number;
  readonly containerIP: string;
  readonly containerPort: number;
  /** Equal to containerPort for a single port; the range has the same length as the host range. */
  readonly containerPortEnd: number;
  /** Dial the container from inside this network namespace (a path such as /proc/PID/ns/net). */
  readonly netns: string | null;
  readonly proxyProtocol: ProxyProtocolVersion | null;
  readonly proxyTlvs: ProxyTlvOptions;
  /** TCP: how long dialling the container may take. */
  readonly connectTimeoutMs: number;
  /** TCP: close a connection with no traffic either way for this long. 0: never. */
  readonly idleTimeoutMs: number;
  /** TCP: after one side has half-closed, close the connection when nothing moves for this long. */
  readonly halfCloseTimeoutMs: number;
  /** TCP: connections open at once through this mapping (per binding); more are refused. 0: no limit. */
  readonly maxConnections: number;
  /** UDP: a flow with no datagram either way for this long is dropped. */
  readonly udpIdleTimeoutMs: number;
  /** UDP: flows per binding; when full, the least recently used flow is evicted. */
  readonly udpMaxFlows: number;
  /** Where it came from, for errors: `-p 8080:10.0.0.2:80` or `mappings[2]`. */
  readonly source: string;
}

/** One concrete listener's worth of a mapping: a host address and port, and its container target. */
export interface Binding {
  readonly mapping: Mapping;
  readonly host: Endpoint;
  readonly container: Endpoint;
}

export interface TcpStats {
  readonly protocol: 'tcp';
  /** Connections open right now. */
  readonly active: number;
  readonly accepted: number;
  /** Connections refused before dialling (connection limit). */
  readonly refused: number;
  /** Dials to the container that failed or timed out. */
  readonly dialFailures: number;
  readonly acceptErrors: number;
  readonly bytesToContainer: number;
  readonly bytesToClient: number;
}

export interface UdpStats {
  readonly protocol: 'udp';
  /** Flows in the table right now. */
  readonly flows: number;
  readonly flowsCreated: number;
  readonly flowsExpired: number;
  readonly flowsEvicted: number;
  readonly datagramsToContainer: number;
  readonly datagramsToClient: number;
  readonly bytesToContainer: number;
  readonly bytesToClient: number;
  /** Datagrams dropped, by reason (`backend-unreachable`, `send-error`, `flow-setup-failed`, …). */
  readonly drops: Readonly<Record<string, number>>;
}

export type ListenerStats = TcpStats | UdpStats;

export interface BindingStats {
  readonly mapping: string;
  readonly host: Endpoint;
  readonly container: Endpoint;
  readonly stats: ListenerStats;
}

/** Why a relay ended. */
export type RelayEndReason =
  | 'done' // both directions ended cleanly (EOF each way)
  | 'client-reset'
  | 'container-reset'
  | 'client-error'
  | 'container-error'
  | 'idle-timeout'
  | 'half-close-timeout'
  | 'destroyed'; // closed from outside (shutdown, mapping removed)

export interface RelayResult {
  readonly bytesToContainer: number;
  readonly bytesToClient: number;
  readonly reason: RelayEndReason;
  readonly durationMs: number;
  /** Directions (0-2) that became bulk transfers and read into the relay's own buffers. */
  readonly bulkDirections: number;
  /** The error code (ECONNRESET, EPIPE, …) when the reason is a reset or error. */
  readonly errorCode?: string;
}

/** A listener for one binding. Owned by the manager. */
export interface Listener {
  readonly binding: Binding;
  /** Bind the socket. Rejects with a PortferryError. */
  listen(): Promise<void>;
  /** The address actually bound (port 0 in the binding becomes the kernel's choice); null before listen. */
  address(): Endpoint | null;
  /** Stop accepting; let open connections/flows finish for up to graceMs; then destroy them. Idempotent. */
  close(graceMs: number): Promise<void>;
  /** Abort everything now. Idempotent. */
  destroy(): void;
  stats(): ListenerStats;
}
