// Shared CLI plumbing: option parsers, mapping loading from flags, error reporting, exit codes.
import { InvalidArgumentError, type Command } from 'commander';
import type { Mapping } from '../api.js';
import { loadMappings } from '../config/index.js';
import { parseDuration } from '../config/validate.js';
import { PortferryError, isPortferryError } from '../errors.js';
import { LOG_LEVELS, type LogFormat, type LogLevel } from '../log.js';

export const EXIT_OK = 0;
/** Configuration, bind or runtime failure. */
export const EXIT_FAILURE = 1;
/** Bad command line. */
export const EXIT_USAGE = 2;

export function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

export function durationArg(value: string): number {
  const d = parseDuration(value, true);
  if (typeof d === 'string') throw new InvalidArgumentError(d);
  return d;
}

export function logLevelArg(value: string): LogLevel {
  if (!(LOG_LEVELS as readonly string[]).includes(value)) throw new InvalidArgumentError(`use one of ${LOG_LEVELS.join(', ')}`);
  return value as LogLevel;
}

export function logFormatArg(value: string): LogFormat {
  if (value !== 'json' && value !== 'pretty') throw new InvalidArgumentError('use json or pretty');
  return value;
}

export function proxyProtocolArg(value: string): 'v1' | 'v2' {
  if (value !== 'v1' && value !== 'v2') throw new InvalidArgumentError('use v1 or v2');
  return value;
}

/** Adds the mapping source options shared by run, validate and rules. */
export function mappingOptions(cmd: Command): Command {
  return cmd
    .option('-p, --publish <spec>', 'publish a port: [hostIP:]hostPort[-end]:containerIP:containerPort[-end][/tcp|/udp] (repeatable)', collect, [])
    .option('-c, --config <file>', 'YAML config file with a `mappings` list (or CNI JSON with runtimeConfig.portMappings)')
    .option('--proxy-protocol <version>', 'send a PROXY protocol header (v1|v2) on the -p mappings', proxyProtocolArg)
    .option('--netns <path>', 'dial the -p mappings\' containers from inside this network namespace (/proc/PID/ns/net, /run/netns/NAME)')
    .option('--container-ip <ip>', 'container address for a CNI portMappings file (which carries none)');
}

export interface MappingFlags {
  readonly publish: string[];
  readonly config?: string;
  readonly proxyProtocol?: 'v1' | 'v2';
  readonly netns?: string;
  readonly containerIp?: string;
}

export function loadFromFlags(flags: MappingFlags): Promise<readonly Mapping[]> {
  const specOptions: Record<string, unknown> = {};
  if (flags.proxyProtocol !== undefined) specOptions['proxyProtocol'] = flags.proxyProtocol;
  if (flags.netns !== undefined) specOptions['netns'] = flags.netns;
  return loadMappings({
    specs: flags.publish,
    ...(flags.config !== undefined ? { file: flags.config } : {}),
    ...(flags.containerIp !== undefined ? { containerIP: flags.containerIp } : {}),
    specOptions,
  });
}

/** Prints an error for people (stderr) and returns the exit code it deserves. */
export function reportError(err: unknown): number {
  if (isPortferryError(err)) {
    process.stderr.write(`portferry: ${err.format()}\n`);
    return err.code === 'PF_USAGE' ? EXIT_USAGE : EXIT_FAILURE;
  }
  process.stderr.write(`portferry: unexpected error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  return EXIT_FAILURE;
}

export { describeMapping } from '../forwarder/ready.js';

export function usageError(message: string): PortferryError {
  return new PortferryError('PF_USAGE', message);
}
