// `portferry ports ls|add|rm`: the client of a running `portferry run --api` (docs/api.md). Parses
// argv, validates mappings with the same code as `run` (so a bad spec is refused here, naming the
// spec, before anything is sent), and talks to the daemon through ApiClient.
import type { Command } from 'commander';
import type { ListenerStats } from '../api.js';
import { formatHostPort } from '../addr.js';
import { mappingToObject } from '../config/index.js';
import { ApiClient, defaultApiSocket, type MappingStats, type MappingStatus } from '../control/client.js';
import { CATALOGUE, PortferryError, isPortferryError } from '../errors.js';
import { EXIT_OK, collect, loadFromFlags, optionFlags, reportError, usageError, type MappingFlags } from './common.js';

interface ClientFlags {
  readonly api: string;
  readonly json?: boolean;
}

function clientOptions(cmd: Command): Command {
  return cmd
    .option('--api <path>', 'the unix socket of `portferry run --api`', defaultApiSocket())
    .option('--json', 'print the API\'s answer as JSON');
}

/** Runs one client action: prints its result, reports a coded error, sets the exit code. */
function action<F extends ClientFlags>(fn: (client: ApiClient, flags: F, args: string[]) => Promise<string | object>) {
  return async (...received: unknown[]): Promise<void> => {
    // commander passes the positional arguments (one variadic list here, or none), then the flags.
    const args = Array.isArray(received[0]) ? (received[0] as string[]) : [];
    const flags = received.find((a) => typeof a === 'object' && a !== null && !Array.isArray(a)) as F;
    try {
      const out = await fn(new ApiClient(flags.api), flags, args);
      process.stdout.write(typeof out === 'string' ? out : `${JSON.stringify(out, null, 2)}\n`);
      process.exitCode = EXIT_OK;
    } catch (err) {
      process.exitCode = reportError(unreachableHint(err, flags.api));
    }
  };
}

/** The daemon is not there: say how to start it on this very path. */
function unreachableHint(err: unknown, api: string): unknown {
  if (!isPortferryError(err) || err.code !== 'PF_API_UNREACHABLE' || err.hint !== CATALOGUE.PF_API_UNREACHABLE.fix) return err;
  return new PortferryError(err.code, err.message, {
    cause: err.cause,
    details: err.details,
    hint: `Start the daemon with \`portferry run --api ${api}\`, or give --api the socket path your daemon serves.`,
  });
}

/** `1.5 KiB`, `12 MiB`, `0 B`. */
export function humanBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${v >= 100 ? v.toFixed(0) : v.toFixed(1)} ${units[i]}`;
}

/** Left-aligned columns, two spaces apart. */
function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]): string => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0))).join('  ').trimEnd();
  return `${[header, ...rows].map(line).join('\n')}\n`;
}

const endpoint = (ip: unknown, port: unknown): string => formatHostPort(typeof ip === 'string' ? ip : null, String(port));

function mappingCells(m: MappingStatus): string[] {
  const o = m.mapping;
  return [String(m.id), m.name, m.owner ?? '-', String(o['protocol']), endpoint(o['hostIP'], o['hostPort']), endpoint(o['containerIP'], o['containerPort'])];
}

/** The traffic of a mapping: its listeners' counters added up. */
function trafficOf(s: MappingStats | undefined): { active: number; bytesIn: number; bytesOut: number } {
  const all = (s?.listeners ?? []).map((l) => l.stats as unknown as ListenerStats);
  const sum = (f: (x: ListenerStats) => number): number => all.reduce((n, x) => n + f(x), 0);
  return {
    active: sum((x) => (x.protocol === 'tcp' ? x.active : x.flows)),
    bytesIn: sum((x) => x.bytesToContainer),
    bytesOut: sum((x) => x.bytesToClient),
  };
}

async function list(client: ApiClient, flags: ClientFlags & { owner?: string }): Promise<string | object> {
  const [mappings, stats] = await Promise.all([client.listMappings(flags.owner), client.stats()]);
  const byId = new Map(stats.map((s) => [s.id, s]));
  if (flags.json === true) return { mappings: mappings.map((m) => ({ ...m, traffic: trafficOf(byId.get(m.id)) })) };
  if (mappings.length === 0) return flags.owner === undefined ? 'no mappings\n' : `no mappings of owner ${flags.owner}\n`;
  const rows = mappings.map((m) => {
    const t = trafficOf(byId.get(m.id));
    return [...mappingCells(m), String(t.active), humanBytes(t.bytesIn), humanBytes(t.bytesOut)];
  });
  return table(['ID', 'NAME', 'OWNER', 'PROTO', 'HOST', 'CONTAINER', 'ACTIVE', 'IN', 'OUT'], rows);
}

interface AddFlags extends ClientFlags, Omit<MappingFlags, 'publish'> {
  readonly owner?: string;
}

async function add(client: ApiClient, flags: AddFlags, specs: string[]): Promise<string | object> {
  if (flags.owner === '') throw usageError('--owner must not be empty');
  // The same validation as `portferry run -p … -c …`: every problem is reported before anything is sent.
  const mappings = await loadFromFlags({ ...flags, publish: specs });
  const added = await client.addMappings(mappings.map(mappingToObject), flags.owner);
  if (flags.json === true) return { mappings: added };
  return `added ${added.length} mapping${added.length === 1 ? '' : 's'}\n${table(['ID', 'NAME', 'OWNER', 'PROTO', 'HOST', 'CONTAINER'], added.map(mappingCells))}`;
}

async function remove(client: ApiClient, flags: ClientFlags & { owner?: string }, ids: string[]): Promise<string | object> {
  if ((flags.owner === undefined) === (ids.length === 0)) throw usageError('give mapping ids (`portferry ports rm 3 4`) or --owner OWNER, one of the two');
  let removed: number[] = [];
  if (flags.owner !== undefined) {
    removed = await client.removeOwner(flags.owner);
  } else {
    const parsed = ids.map((id) => (/^\d{1,15}$/.test(id) && Number(id) >= 1 ? Number(id) : NaN));
    const bad = ids.filter((_, i) => Number.isNaN(parsed[i]));
    if (bad.length > 0) throw usageError(`not a mapping id: ${bad.join(', ')} (ids are whole numbers from 1; \`portferry ports ls\` lists them)`);
    // One at a time, in the order given; the first failure stops (what was removed is said).
    for (const id of parsed) {
      try {
        removed.push(...(await client.removeMapping(id)));
      } catch (err) {
        if (removed.length > 0 && isPortferryError(err)) process.stderr.write(`portferry: removed ${removed.join(', ')} before the error below\n`);
        throw err;
      }
    }
  }
  if (flags.json === true) return { removed };
  if (removed.length === 0) return `removed nothing: owner ${flags.owner ?? ''} has no mappings\n`;
  return `removed ${removed.join(', ')}\n`;
}

export function registerPortsCommand(program: Command): void {
  const ports = program
    .command('ports')
    .description('list, add and remove mappings of a running `portferry run --api` (docs/api.md)');
  clientOptions(ports.command('ls').description('list the mappings with their traffic (ACTIVE: connections or flows open; IN: bytes to the container; OUT: bytes to clients)'))
    .option('--owner <owner>', 'only the mappings of this owner')
    .action(action(list));
  const addCmd = clientOptions(ports.command('add').description('add mappings, all or nothing: -p style specs and/or a YAML file\'s mappings').argument('[specs...]', '[hostIP:]hostPort[-end]:containerIP:containerPort[-end][/tcp|/udp]'))
    .option('-c, --config <file>', 'a YAML file with a `mappings` list (the same schema as `run -c`); repeatable: the files are merged, names unique across them', collect)
    .option('--owner <owner>', 'label the new mappings with this owner (a container id, say)');
  // Every per-mapping option flag of the table, applied to the spec mappings (as `run -p` does).
  optionFlags(addCmd).action(action(add));
  clientOptions(ports.command('rm').description('remove mappings by id, or every mapping of an owner').argument('[ids...]', 'mapping ids (see `ports ls`)'))
    .option('--owner <owner>', 'remove every mapping of this owner')
    .action(action(remove));
}
