// The command line: the only place that reads argv and env, wires modules, and picks exit codes.
import { Command, CommanderError } from 'commander';
import { registerBenchCommand } from './bench.js';
import { registerDemoCommand } from './demo.js';
import { registerPortsCommand } from './ports.js';
import { registerRulesCommand } from './rules.js';
import { registerRunCommand } from './run.js';
import { registerValidateCommand } from './validate.js';
import { EXIT_OK, reportError, usageFromCommander } from './common.js';
import { handleClosedOutput, setClosedOutputMode } from './output.js';
import { VERSION } from '../version.js';

// First of all: a reader that goes away (`| head`) ends a command quietly, never with a trace.
handleClosedOutput();

const program = new Command()
  .name('portferry')
  .description('userspace TCP/UDP port forwarder for containers (the fallback when kernel DNAT is unavailable)')
  .version(VERSION)
  // Parse errors are reported below as PF_USAGE with a hint (exit 2), not as commander's own text.
  // Set before the commands are registered: they inherit both settings.
  .configureOutput({ outputError: () => {} })
  .exitOverride();

// The daemon keeps forwarding when its log's reader goes away (output.ts says why).
program.hook('preAction', (_program, action) => {
  if (action.name() === 'run') setClosedOutputMode('ignore');
});

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
    // --help and --version end with exit code 0; everything else is a bad command line.
    process.exitCode = err.exitCode === 0 ? EXIT_OK : reportError(usageFromCommander(err, program, process.argv));
  } else {
    throw err;
  }
}
