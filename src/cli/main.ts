// The command line: the only place that reads argv and env, wires modules, and picks exit codes.
import { Command, CommanderError } from 'commander';
import { registerBenchCommand } from './bench.js';
import { registerDemoCommand } from './demo.js';
import { registerPortsCommand } from './ports.js';
import { registerRulesCommand } from './rules.js';
import { registerRunCommand } from './run.js';
import { registerValidateCommand } from './validate.js';
import { EXIT_USAGE } from './common.js';
import { VERSION } from '../version.js';

const program = new Command()
  .name('portferry')
  .description('userspace TCP/UDP port forwarder for containers (the fallback when kernel DNAT is unavailable)')
  .version(VERSION)
  .showHelpAfterError('(run with --help for usage)')
  .exitOverride();

registerRunCommand(program);
registerValidateCommand(program);
registerDemoCommand(program);
registerBenchCommand(program);
registerRulesCommand(program);
registerPortsCommand(program);

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) {
    process.exitCode = err.exitCode === 0 ? 0 : EXIT_USAGE;
  } else {
    throw err;
  }
}
