// portferry as a library: the forwarder service that `portferry run` is built on. Start one, add
// and remove mappings (YAML-schema objects or `-p` specs) at runtime, read its stats, close it.
//
//   import { Forwarder, createLogger, mappingsFromObjects } from 'portferry';
//   const fwd = new Forwarder({ logger: createLogger({ level: 'warn' }) });
//   const [entry] = await fwd.add(mappingsFromObjects([{ hostPort: 8080, containerIP: '10.88.0.2', containerPort: 80 }], 'app'), { origin: 'api', owner: 'web' });
//   ...
//   await fwd.close(5_000);
export type { Mapping, Protocol, Endpoint, ListenerStats, TcpStats, UdpStats, RelayResult } from './api.js';
export { PortferryError, CATALOGUE, type ErrorCode } from './errors.js';
export { createLogger, type Logger, type LoggerOptions } from './log.js';
export { loadMappings, mappingsFromObjects, mappingToObject } from './config/index.js';
export { Forwarder, startForwarder, type Entry, type Origin, type ForwarderOptions, type ForwarderSnapshot, type Recorder, type StatsRow } from './forwarder/index.js';
export { startApiServer, type ApiServer, type ApiServerOptions } from './control/server.js';
export { ApiClient, apiRequest, defaultApiSocket, type MappingStatus } from './control/client.js';
export { VERSION } from './version.js';
