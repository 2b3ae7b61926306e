// Shared CLI plumbing: option parsers, mapping loading from flags, error reporting, exit codes.
import { CommanderError, InvalidArgumentError, Option, type Command } from 'commander';
import type { Mapping } from '../api.js';
import { MAPPING_OPTION_KEYS, OPTIONS, formatDuration, loadMappings, parseDuration } from '../config/index.js';
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

export { formatDuration } from '../config/index.js';

/** --proxy-protocol for commands that keep their own flag (ports): the table's own parser. */

/**
 * A duration option whose default shows in --help as written (`(default: 10s)`, not 10000):
 * `cmd.addOption(durationOption('--drain-timeout <duration>', 'help text', DEFAULTS.drainTimeoutMs))`.
 */
export function durationOption(flags: string, description: string, defaultMs: number): Option {
  return new Option(flags, description).argParser(durationArg).default(defaultMs, formatDuration(defaultMs));
}

/**
 * Adds the mapping source options shared by run and validate: -p, -c, --container-ip, and a flag
 * for every per-mapping option of the table that has one (config/options.ts), applied to the -p
 * mappings and checked by the same parser as a file's value.
 */
export function mappingOptions(cmd: Command): Command {
  cmd
    .option('-p, --publish <spec>', 'publish a port: [hostIP:]hostPort[-end]:containerIP:containerPort[-end][/tcp|/udp] (repeatable)', collect)
    .option('-c, --config <file>', 'YAML config file with a `mappings` list (or CNI JSON with runtimeConfig.portMappings); a regular file of at most 1 MiB; repeatable: the files are merged, names unique across them', collect)
    .option('--container-ip <ip>', 'container address for a CNI portMappings file (which carries none)');
  return optionFlags(cmd);
}

/** A flag for every per-mapping option of the table that has one (run, validate, ports add). */
export function optionFlags(cmd: Command): Command {
  for (const key of MAPPING_OPTION_KEYS) {
    const flag = (OPTIONS[key] as { flag?: { spec: string; help: string } }).flag;
    if (flag !== undefined) cmd.option(flag.spec, flag.help);
  }
  return cmd;
}

export interface MappingFlags {
  /** Absent when no -p was given (no `(default: [])` in --help). */
  readonly publish?: string[];
  /** Every -c, in order (absent when none was given). */
  readonly config?: string[];
  readonly containerIp?: string;
  /** The option flags of the table (as given; loadFromFlags checks them with the table's parsers). */
  readonly proxyProtocol?: string;
  readonly netns?: string;
}

export function loadFromFlags(flags: MappingFlags): Promise<readonly Mapping[]> {
  const given = flags as Readonly<Record<string, unknown>>;
  const specOptions: Record<string, unknown> = {};
  for (const key of MAPPING_OPTION_KEYS) if (given[key] !== undefined) specOptions[key] = given[key];
  return loadMappings({
    specs: flags.publish ?? [],
    files: flags.config ?? [],
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

/** A commander parse error (unknown option, bad argument …) as PF_USAGE naming the command's --help. */
export function usageFromCommander(err: CommanderError, program: Command, argv: readonly string[]): PortferryError {
  // The subcommand is the first argument (an option's value elsewhere may be spelt like one).
  const sub = program.commands.find((c) => c.name() === argv[2]);
  const help = `portferry${sub === undefined ? '' : ` ${sub.name()}`} --help`;
  const message = err.message.replace(/^error: /, '').trim();
  return new PortferryError('PF_USAGE', message === '' ? `the command line is not valid (${err.code})` : message, {
    cause: err,
    details: { commander: err.code },
    hint: `Run \`${help}\` for the options${sub === undefined ? ' and commands' : ''}.`,
  });
}
