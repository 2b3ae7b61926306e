// `portferry validate`: check the mappings exactly as `run` would, print them normalised, exit 1 on error.
import type { Command } from 'commander';
import { formatHostPort } from '../addr.js';
import { expandBindings } from '../config/validate.js';
import { EXIT_OK, describeMapping, loadFromFlags, mappingOptions, reportError, type MappingFlags } from './common.js';

export function registerValidateCommand(program: Command): void {
  const cmd = program.command('validate').description('check mappings (-p/-c) and print them normalised; exit 1 on any problem');
  mappingOptions(cmd)
    .option('--json', 'print the normalised mappings as JSON')
    .action(async (flags: MappingFlags & { json?: boolean }) => {
      try {
        const mappings = await loadFromFlags(flags);
        if (flags.json === true) {
          process.stdout.write(`${JSON.stringify(mappings, null, 2)}\n`);
        } else {
          for (const m of mappings) {
            const d = describeMapping(m);
            const extras = Object.entries(d).filter(([k]) => !['name', 'protocol', 'hostIP', 'hostPort', 'containerIP', 'containerPort'].includes(k)).map(([k, v]) => ` ${k}=${String(v)}`).join('');
            const listeners = expandBindings(m).length;
            process.stdout.write(`${m.name}: ${m.protocol} ${formatHostPort(m.hostIP, String(d['hostPort']))} -> ${formatHostPort(m.containerIP, String(d['containerPort']))} (${listeners} listener${listeners === 1 ? '' : 's'}${m.hostIP === null ? ' on 0.0.0.0 and ::' : ''})${extras}\n`);
          }
          process.stdout.write(`ok: ${mappings.length} mapping${mappings.length === 1 ? '' : 's'}\n`);
        }
        process.exitCode = EXIT_OK;
      } catch (err) {
        process.exitCode = reportError(err);
      }
    });
}
