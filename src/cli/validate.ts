// `portferry validate`: every check `run` makes short of binding — the mappings as `run` loads them,
// and each netns path is a network namespace — then the mappings normalised; exit 1 on error.
// What only binding can tell is listed as not checked.
import type { Command } from 'commander';
import { formatHostPort } from '../addr.js';
import { bindingCount } from '../config/index.js';
import { checkNetnsPaths } from '../forwarder/dialers.js';
import { EXIT_OK, describeMapping, loadFromFlags, mappingOptions, reportError, type MappingFlags } from './common.js';

/** What `run` finds out only by binding and dialling. */
const NOT_CHECKED =
  'not checked (only `run` can tell): that each host address and port is free and this user may bind it, that each host IP is an address of this host, that portferry may enter each netns, and that the containers answer';

export function registerValidateCommand(program: Command): void {
  const cmd = program.command('validate').description('make every check `run` makes short of binding, print the mappings normalised; exit 1 on any problem');
  mappingOptions(cmd)
    .option('--json', 'print the normalised mappings as JSON')
    .action(async (flags: MappingFlags & { json?: boolean }) => {
      try {
        const mappings = await loadFromFlags(flags);
        await checkNetnsPaths(mappings);
        if (flags.json === true) {
          process.stdout.write(`${JSON.stringify(mappings, null, 2)}\n`);
          process.stderr.write(`portferry: ${NOT_CHECKED}\n`);
        } else {
          for (const m of mappings) {
            const d = describeMapping(m);
            const extras = Object.entries(d).filter(([k]) => !['name', 'protocol', 'hostIP', 'hostPort', 'containerIP', 'containerPort'].includes(k)).map(([k, v]) => ` ${k}=${String(v)}`).join('');
            const listeners = bindingCount(m);
            process.stdout.write(`${m.name}: ${m.protocol} ${formatHostPort(m.hostIP, String(d['hostPort']))} -> ${formatHostPort(m.containerIP, String(d['containerPort']))} (${listeners} listener${listeners === 1 ? '' : 's'}${m.hostIP === null ? ' on 0.0.0.0 and ::' : ''})${extras}\n`);
          }
          process.stdout.write(`ok: ${mappings.length} mapping${mappings.length === 1 ? '' : 's'}\n${NOT_CHECKED}\n`);
        }
        process.exitCode = EXIT_OK;
      } catch (err) {
        process.exitCode = reportError(err);
      }
    });
}
