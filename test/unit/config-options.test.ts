// The one table of options (src/config/options.ts): the README's table is generated from it, the
// defaults and the file/API schema come from it, and every option round-trips.
import t from 'tap';
import { readFileSync } from 'node:fs';
import { DEFAULTS, MAPPING_OPTION_KEYS, OPTIONS, loadMappings, mappingToObject, mappingsFromObjects, optionSchema, renderOptionsTable } from '../../src/config/index.js';
import { extractOptionsTable } from '../../src/config/options-doc.js';
import { repoRoot } from '../helpers/net.js';

t.test('the README options table is the one generated from OPTIONS (npm run docs:options)', async (t) => {
  const readme = readFileSync(`${repoRoot}/README.md`, 'utf8');
  const table = extractOptionsTable(readme);
  t.ok(table, 'the README has the options-table markers');
  t.equal(table, renderOptionsTable(), 'README.md differs from src/config/options.ts: run `npm run docs:options`');
  for (const key of Object.keys(OPTIONS)) t.match(table ?? '', `| \`${key}\` |`, `${key} has a row`);
});

t.test('defaults come from the table, and a mapping without options gets them', async (t) => {
  const [m] = await loadMappings({ specs: ['127.0.0.1:8080:10.0.0.1:80'] });
  for (const key of MAPPING_OPTION_KEYS) {
    const { field } = OPTIONS[key];
    t.same(m?.[field], OPTIONS[key].default, `${key}: default`);
  }
  t.equal(DEFAULTS.drainTimeoutMs, 10_000, 'the process option is in DEFAULTS too');
  t.equal(DEFAULTS.connectTimeoutMs, 5_000);
});

t.test('every option round-trips through mappingToObject / mappingsFromObjects with a non-default value', async (t) => {
  const obj = {
    name: 'all',
    protocol: 'tcp',
    hostIP: '127.0.0.1',
    hostPort: '9000-9001',
    containerIP: 'fd00::2',
    containerPort: '19000-19001',
    connectTimeout: '1500ms',
    idleTimeout: '10m',
    halfCloseTimeout: 0,
    maxConnections: 7,
    udpIdleTimeout: '2h',
    udpMaxFlows: 3,
    proxyProtocol: 'v2',
    proxyProtocolTLVs: ['uniqueId', 'crc32c'],
    netns: '/run/netns/x',
  };
  const keys = Object.keys(obj);
  for (const key of MAPPING_OPTION_KEYS) t.ok(keys.includes(key), `the test sets ${key}`);
  const [m] = mappingsFromObjects([obj], 'test');
  t.ok(m);
  for (const key of MAPPING_OPTION_KEYS) t.not(m?.[OPTIONS[key].field], OPTIONS[key].default, `${key} is not the default`);
  const back = mappingToObject(m!);
  t.same(back, obj, 'written back as given');
  const [again] = mappingsFromObjects([back], 'again');
  t.same({ ...again, source: '' }, { ...m, source: '' }, 'and read again the same');
});

t.test('optionSchema: every option with scope, type, doc; defaults as written', async (t) => {
  const schema = optionSchema();
  t.same(schema.map((o) => o.key), Object.keys(OPTIONS));
  t.match(schema.find((o) => o.key === 'connectTimeout'), { scope: 'mapping', type: 'duration', default: '5s' });
  t.match(schema.find((o) => o.key === 'drainTimeout'), { scope: 'process', default: '10s' });
  t.match(schema.find((o) => o.key === 'netns'), { scope: 'mapping', flag: '--netns' });
  t.notOk('default' in (schema.find((o) => o.key === 'proxyProtocol') ?? {}), 'no default: none');
  for (const o of schema) t.ok(o.doc.length > 10, `${o.key} has a doc line`);
});

t.test('file defaults: every mapping option is allowed under defaults:, a bad one is named there', async (t) => {
  const defaults = Object.fromEntries(MAPPING_OPTION_KEYS.map((k) => [k, k === 'proxyProtocolTLVs' ? ['crc32c'] : k === 'netns' ? '/run/netns/y' : k === 'proxyProtocol' ? 'v2' : k.endsWith('Timeout') ? '3s' : 5]));
  const { parseConfigText } = await import('../../src/config/file.js');
  const parsed = parseConfigText(JSON.stringify({ defaults, mappings: [{ hostPort: 1, containerIP: '10.0.0.1', containerPort: 2 }] }), 'f.yaml');
  t.same(parsed.problems, [], 'no problems');
  const bad = parseConfigText(JSON.stringify({ defaults: { connectTimeout: 'soon' }, mappings: [{ hostPort: 1, containerIP: '10.0.0.1', containerPort: 2 }] }), 'f.yaml');
  t.equal(bad.problems[0]?.code, 'PF_DURATION_INVALID');
  t.match(bad.problems[0]?.message, /^f\.yaml: defaults\.connectTimeout: connectTimeout "soon"/);
});

t.test('durationOption: a duration flag whose --help default reads as written (10s, not 10000)', async (t) => {
  const { durationOption, formatDuration } = await import('../../src/cli/common.js');
  const o = durationOption('--drain-timeout <duration>', 'drain', 10_000);
  t.equal(o.defaultValue, 10_000, 'the value stays in ms');
  t.equal(o.defaultValueDescription, '10s', 'shown as written');
  t.equal(o.parseArg?.('1.5s', undefined), 1500, 'parsed as a duration');
  t.same([0, 1500, 90_000, 120_000, 3_600_000].map(formatDuration), ['0', '1500ms', '90s', '2m', '1h']);
});
