// `npm run docs:options`: rewrites the README's options table (between the options-table markers)
// from the one table of options in src/config/options.ts (built to dist/). With --check, rewrites
// nothing and exits 1 when the README differs (test/unit/config-options.test.ts checks the same).
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { renderOptionsTable } from '../dist/config/options.js';
import { replaceOptionsTable } from '../dist/config/options-doc.js';

const readme = fileURLToPath(new URL('../README.md', import.meta.url));
const before = readFileSync(readme, 'utf8');
const after = replaceOptionsTable(before, renderOptionsTable());
if (process.argv.includes('--check')) {
  if (after !== before) {
    process.stderr.write('README.md: the options table differs from src/config/options.ts; run `npm run docs:options`\n');
    process.exit(1);
  }
} else if (after !== before) {
  writeFileSync(readme, after);
  process.stdout.write('README.md: options table rewritten\n');
} else {
  process.stdout.write('README.md: options table up to date\n');
}
