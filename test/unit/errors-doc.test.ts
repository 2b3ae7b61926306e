// docs/errors.md and the catalogue in src/errors.ts list the same codes with the same text.
import t from 'tap';
import { readFileSync } from 'node:fs';
import { CATALOGUE } from '../../src/errors.js';
import { repoRoot } from '../helpers/net.js';

const doc = readFileSync(`${repoRoot}/docs/errors.md`, 'utf8');
const rows = new Map<string, { meaning: string; fix: string }>();
for (const line of doc.split('\n')) {
  const m = /^\| `(PF_[A-Z0-9_]+)` \| (.*) \| (.*) \|$/.exec(line);
  if (m !== null) rows.set(m[1]!, { meaning: m[2]!.replace(/\\\|/g, '|'), fix: m[3]!.replace(/\\\|/g, '|') });
}

t.test('every catalogue code is documented with the same meaning and fix', async (t) => {
  for (const [code, entry] of Object.entries(CATALOGUE)) {
    const row = rows.get(code);
    t.ok(row, `${code} has a row in docs/errors.md`);
    if (row === undefined) continue;
    t.equal(row.meaning, entry.meaning, `${code}: meaning matches`);
    t.equal(row.fix, entry.fix, `${code}: fix matches`);
  }
});

t.test('docs/errors.md lists no code the catalogue lacks', async (t) => {
  const extra = [...rows.keys()].filter((c) => !(c in CATALOGUE));
  t.same(extra, [], 'no stale rows');
  t.ok(rows.size >= 20, `the table was parsed (${rows.size} rows)`);
});
