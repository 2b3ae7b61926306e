// The report: medians, failures that never become numbers, ratios to direct, the Markdown table
// with failed and skipped cells, and a well-formed SVG.
import t from 'tap';
import { aggregate, median, renderMarkdown, renderSvg, withRatios } from '../../src/bench/report.js';
import type { BenchResult, Cell, Sample } from '../../src/bench/types.js';

const ok = (metrics: Record<string, number>): Sample => ({ ok: true, metrics });

t.test('median of odd and even counts', async (t) => {
  t.equal(median([3, 1, 2]), 2);
  t.equal(median([4, 1, 3, 2]), 2.5);
  t.ok(Number.isNaN(median([])));
});

t.test('aggregate: medians per metric; any failed repetition fails the cell with its reason', async (t) => {
  const c = aggregate('portferry', 'tcp-1', [ok({ gbps: 9, bytes: 1 }), ok({ gbps: 11, bytes: 3 }), ok({ gbps: 10, bytes: 2 })]);
  t.equal(c.status, 'ok');
  t.same(c.metrics, { bytes: 2, gbps: 10 });

  const f = aggregate('socat', 'rr', [ok({ tps: 5 }), { ok: false, reason: 'no transaction was answered' }, { ok: false, reason: 'no transaction was answered' }]);
  t.equal(f.status, 'failed');
  t.equal(f.metrics, undefined, 'a failed cell carries no figure');
  t.equal(f.reason, '2 of 3 runs failed: no transaction was answered');

  t.equal(aggregate('nginx', 'cps', []).status, 'skipped', 'nothing run is not a number either');
});

t.test('ratios to direct: only for ok cells of workloads with a ratio, and when direct is ok', async (t) => {
  const cells: Cell[] = [
    aggregate('direct', 'tcp-1', [ok({ gbps: 20 })]),
    aggregate('portferry', 'tcp-1', [ok({ gbps: 10 })]),
    aggregate('socat', 'tcp-1', [{ ok: false, reason: 'x' }]),
    aggregate('direct', 'idle', [ok({ open: 10, failed: 0 })]),
    aggregate('portferry', 'idle', [ok({ open: 10, failed: 0, rssMiB: 50, kibPerConn: 3 })]),
    aggregate('direct', 'rr', [{ ok: false, reason: 'broken' }]),
    aggregate('portferry', 'rr', [ok({ tps: 100, p50us: 1, p99us: 2 })]),
  ];
  const r = withRatios(cells);
  t.equal(r[0]?.ratio, 1);
  t.equal(r[1]?.ratio, 0.5);
  t.equal(r[2]?.ratio, undefined, 'failed: no ratio');
  t.equal(r[4]?.ratio, undefined, 'idle: memory has no ratio');
  t.equal(r[6]?.ratio, undefined, 'direct failed: no ratio');
});

function sample(): BenchResult {
  const cells = withRatios([
    aggregate('direct', 'tcp-1', [ok({ gbps: 20, bytes: 1e9 })]),
    aggregate('direct', 'udp-64', [ok({ kpps: 200, lossPct: 0.5, sent: 1000 })]),
    aggregate('portferry', 'tcp-1', [ok({ gbps: 10, bytes: 1e9, cpuSecPerGB: 0.25 })]),
    aggregate('portferry', 'udp-64', [{ ok: false, reason: 'none of 1000 datagrams arrived at the container' }]),
    { path: 'haproxy-splice', workload: 'udp-64', status: 'skipped', reason: 'haproxy does not forward UDP', samples: [] },
    aggregate('haproxy-splice', 'tcp-1', [ok({ gbps: 15, bytes: 1e9, cpuSecPerGB: 0.3 })]),
    { path: 'nginx', workload: 'tcp-1', status: 'skipped', reason: 'not installed (apt-get install -y nginx)', samples: [] },
    { path: 'nginx', workload: 'udp-64', status: 'skipped', reason: 'not installed (apt-get install -y nginx)', samples: [] },
  ]);
  return {
    meta: {
      date: '2026-01-01T00:00:00.000Z',
      kernel: '6.1.0',
      cpus: 2,
      cpuModel: 'Test CPU <&>',
      node: 'v20.0.0',
      portferry: '0.1.0',
      tools: { iperf3: '3.12' },
      reps: 3,
      quick: false,
      durations: { bulkSeconds: 5, otherSeconds: 4, idleConnections: 10000 },
      elapsedSeconds: 100,
    },
    paths: [
      { name: 'direct', status: 'measured', description: 'no forwarder' },
      { name: 'portferry', status: 'measured', description: 'this build' },
      { name: 'haproxy-splice', status: 'measured', description: 'haproxy-splice <tcp>' },
      { name: 'nginx', status: 'skipped', reason: 'not installed (apt-get install -y nginx)', description: 'nginx' },
    ],
    workloads: ['tcp-1', 'udp-64'],
    cells,
  };
}

t.test('Markdown: figures with ratios, FAILED and n/a cells with their reasons, skipped paths, facts', async (t) => {
  const md = renderMarkdown(sample());
  t.match(md, /kernel 6\.1\.0, 2 CPU/);
  t.match(md, /Node v20\.0\.0/);
  t.match(md, /\| direct \| 20 \(1\.00×\) \| 200 \(1\.00×\)<br>loss 0\.5 % \| — \|/);
  t.match(md, /\| portferry \| 10 \(0\.50×\) \| FAILED \[1\] \| 0\.25 \|/);
  t.match(md, /\| haproxy-splice \| 15 \(0\.75×\) \| n\/a \[2\] \| 0\.3 \|/);
  t.match(md, /\| nginx \| skipped \| skipped \| — \|/);
  t.match(md, /1\. portferry: FAILED — 1 of 1 runs failed: none of 1000 datagrams arrived at the container/);
  t.match(md, /2\. haproxy-splice: n\/a — haproxy does not forward UDP/);
  t.match(md, /3\. nginx: skipped — not installed \(apt-get install -y nginx\)/);
  t.notMatch(md, /NaN|undefined/);
  // every table row has as many cells as the header
  const rows = md.split('\n').filter((l) => l.startsWith('|'));
  const widths = new Set(rows.map((r) => r.split('|').length));
  t.equal(widths.size, 1, 'rectangular table');
});

/** A small XML well-formedness check: every tag closes in order, attributes quoted, entities known. */
function wellFormed(xml: string): string | null {
  const stack: string[] = [];
  const re = /<(\/?)([a-zA-Z][\w:-]*)((?:\s+[\w:-]+="[^"<]*")*)\s*(\/?)>|<\?[^>]*\?>|<|&(?!amp;|lt;|gt;|quot;|#\d+;)/g;
  let m: RegExpExecArray | null;
  while ((m = re.exec(xml)) !== null) {
    if (m[0] === '<') return `stray < at ${m.index}`;
    if (m[0].startsWith('&')) return `bad entity at ${m.index}`;
    if (m[0].startsWith('<?')) continue;
    const [, close, name, , self] = m;
    if (self === '/') continue;
    if (close === '/') {
      if (stack.pop() !== name) return `</${name}> closes the wrong element at ${m.index}`;
    } else stack.push(name as string);
  }
  return stack.length === 0 ? null : `unclosed <${stack.join('>, <')}>`;
}

t.test('SVG: well-formed, one bar per ok ratio, a red × for a failed cell, escaped text', async (t) => {
  const svg = renderSvg(sample());
  t.equal(wellFormed(svg), null, 'well-formed XML');
  t.match(svg, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
  t.equal((svg.match(/<rect [^>]*fill="#(?!ffffff)[0-9a-f]{6}"><title>/g) ?? []).length, 4, 'bars: direct tcp, portferry tcp, haproxy-splice tcp, direct udp');
  t.match(svg, /<title>portferry \/ udp-64: FAILED — [^<]*<\/title>×/);
  t.notMatch(svg, /nginx<\/text>/, 'a skipped path has no legend entry');
  t.not(wellFormed('<svg><g></svg>'), null, 'the checker itself rejects bad XML');
  t.not(wellFormed('<svg>a & b</svg>'), null);
});

t.test('the naive path and the pinned workloads: their own rows and columns, with ratios, the pinning stated', async (t) => {
  const base = sample();
  const cells = withRatios([
    aggregate('direct', 'cps', [ok({ cps: 20000, failed: 0 })]),
    aggregate('direct', 'cps-pinned', [ok({ cps: 14000, failed: 0 })]),
    aggregate('direct', 'rr-pinned', [ok({ tps: 30000, p50us: 30, p99us: 50 })]),
    aggregate('naive', 'cps', [ok({ cps: 8000, failed: 0 })]),
    aggregate('naive', 'cps-pinned', [ok({ cps: 7000, failed: 2 })]),
    aggregate('naive', 'rr-pinned', [ok({ tps: 15000, p50us: 60, p99us: 90 })]),
  ]);
  const r: BenchResult = {
    ...base,
    meta: { ...base.meta, connLoops: 16, pinnedCpu: 1 },
    paths: [
      { name: 'direct', status: 'measured', description: 'no forwarder' },
      { name: 'naive', status: 'measured', description: 'naive Node proxy' },
    ],
    workloads: ['cps', 'cps-pinned', 'rr-pinned'],
    cells,
  };
  const md = renderMarkdown(r);
  t.match(md, /\| path \| connections \(conn\/s\) \| connections, 1 CPU \(conn\/s\) \| request\/response, 1 CPU \(trans\/s, p50\/p99\) \|\n/, 'no CPU s/GB column without TCP 1 stream →');
  t.match(md, /\| naive \| 8,000 \(0\.40×\) \| 7,000 \(0\.50×\) \| 15,000 \(0\.50×\)<br>60 \/ 90 µs \|\n/);
  t.match(md, /Connections: 16 parallel loops/);
  t.match(md, /pinned to CPU 1 with taskset/);
  t.match(md, /- naive: naive Node proxy/);
  const svg = renderSvg(r);
  t.equal(wellFormed(svg), null);
  t.match(svg, /<title>naive \/ connections, 1 CPU: 0\.50× direct<\/title>/);
  t.match(svg, />naive<\/text>/, 'naive has a legend entry');
});
