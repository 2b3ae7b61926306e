// Results → people: median aggregation, the Markdown table, the SVG chart. Pure functions.
import { WORKLOADS, type BenchResult, type Cell, type PathName, type Sample, type WorkloadId } from './types.js';

export function median(values: readonly number[]): number {
  if (values.length === 0) return Number.NaN;
  const s = [...values].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
}

/**
 * One cell from its repetitions: every repetition must have succeeded (a path that fails now and
 * then is a failed path, not a slower one); then each metric is the median over them.
 */
/** The table's cells, path by path: a skipped path's or workload's reason, else the aggregate of its samples (keyed `path\0workload`). Both scenarios' runners use it. */
export function collectCells(
  statuses: readonly { readonly name: PathName; readonly status: string; readonly reason?: string | undefined }[],
  workloads: readonly WorkloadId[],
  skipped: ReadonlyMap<string, string>,
  samples: ReadonlyMap<string, readonly Sample[]>,
): Cell[] {
  const cells: Cell[] = [];
  for (const s of statuses) {
    for (const w of workloads) {
      const k = `${s.name}\u0000${w}`;
      const skip = s.status === 'skipped' ? (s.reason ?? 'skipped') : skipped.get(k);
      if (skip !== undefined) cells.push({ path: s.name, workload: w, status: 'skipped', reason: skip, samples: [] });
      else cells.push(aggregate(s.name, w, samples.get(k) ?? []));
    }
  }
  return cells;
}

export function aggregate(path: PathName, workload: WorkloadId, samples: readonly Sample[]): Cell {
  if (samples.length === 0) return { path, workload, status: 'skipped', reason: 'not run', samples };
  const failed = samples.filter((s): s is Extract<Sample, { ok: false }> => !s.ok);
  if (failed.length > 0) {
    const reasons = [...new Set(failed.map((f) => f.reason))];
    return { path, workload, status: 'failed', reason: `${failed.length} of ${samples.length} runs failed: ${reasons.join('; ')}`, samples };
  }
  const keys = new Set<string>();
  for (const s of samples) if (s.ok) for (const k of Object.keys(s.metrics)) keys.add(k);
  const metrics: Record<string, number> = {};
  for (const k of [...keys].sort()) {
    const vals = samples.flatMap((s) => (s.ok && typeof s.metrics[k] === 'number' ? [s.metrics[k] as number] : []));
    metrics[k] = median(vals);
  }
  return { path, workload, status: 'ok', metrics, samples };
}

/** Adds ratio-to-direct to every ok cell whose workload has one. */
export function withRatios(cells: readonly Cell[]): Cell[] {
  return cells.map((c) => {
    const info = WORKLOADS[c.workload];
    if (c.status !== 'ok' || !info.ratio) return c;
    const base = cells.find((d) => d.path === 'direct' && d.workload === c.workload);
    const mine = c.metrics?.[info.primary];
    const theirs = base?.status === 'ok' ? base.metrics?.[info.primary] : undefined;
    if (mine === undefined || theirs === undefined || !(theirs > 0)) return c;
    return { ...c, ratio: mine / theirs };
  });
}

function num(v: number, digits = 3): string {
  if (!Number.isFinite(v)) return '—';
  if (Math.abs(v) >= 1000) return Math.round(v).toLocaleString('en-US');
  return Number(v.toPrecision(digits)).toString();
}

/** The text of a cell in the table (without footnote markers). */
function cellText(c: Cell): string {
  if (c.status === 'skipped') return `n/a`;
  if (c.status === 'failed') return 'FAILED';
  const m = c.metrics ?? {};
  const g = (k: string): number => m[k] ?? Number.NaN;
  const ratio = c.ratio === undefined ? '' : ` (${c.ratio.toFixed(2)}×)`;
  switch (c.workload) {
    case 'tcp-1':
    case 'tcp-1-rev':
    case 'tcp-8':
    case 'tcp-1-local':
      return `${num(g('gbps'))}${ratio}`;
    case 'rr':
    case 'rr-pinned':
      return `${num(g('tps'))}${ratio}<br>${num(g('p50us'))} / ${num(g('p99us'))} µs`;
    case 'cps':
    case 'cps-pinned':
      return `${num(g('cps'))}${ratio}`;
    case 'idle': {
      const open = `${num(g('open'))}/${num(g('open') + g('failed'))}`;
      return m['rssMiB'] === undefined ? open : `${open}<br>${num(g('rssMiB'))} MiB, +${num(g('kibPerConn'), 2)} KiB/conn`;
    }
    case 'udp-64':
    case 'udp-1400':
      return `${num(g('kpps'))}${ratio}<br>loss ${num(g('lossPct'), 2)} %`;
    case 'rss':
      return `${num(g('rssMiB'))} (${num(g('processes'))} process${g('processes') === 1 ? '' : 'es'})`;
    case 'netns-10':
      return `${num(g('rss1MiB'))} → ${num(g('rss10MiB'))}<br>+${num(g('perNsMiB'))} per ns (${num(g('processes1'))} → ${num(g('processes10'))} processes)`;
  }
}

function cpuText(cells: readonly Cell[], path: PathName): string {
  const c = cells.find((x) => x.path === path && x.workload === 'tcp-1');
  const v = c?.status === 'ok' ? c.metrics?.['cpuSecPerGB'] : undefined;
  return v === undefined ? '—' : num(v, 2);
}

/** The Markdown report: header facts, one table (paths × workloads), footnotes for failures. */
export function renderMarkdown(r: BenchResult): string {
  const m = r.meta;
  const lines: string[] = [];
  const rootless = m.scenario === 'rootless';
  lines.push(`portferry bench${rootless ? ' --scenario rootless' : ''} — ${m.date}, kernel ${m.kernel}, ${m.cpus} CPU (${m.cpuModel}), Node ${m.node}, portferry ${m.portferry}`);
  lines.push('');
  lines.push(
    `Median of ${m.reps} run${m.reps === 1 ? '' : 's'} per cell${m.quick ? ' (--quick)' : ''}; bulk ${m.durations.bulkSeconds} s, other workloads ${m.durations.otherSeconds} s` +
      `${rootless ? '' : `, ${m.durations.idleConnections.toLocaleString('en-US')} idle connections`}; (N×) = ratio to direct. Took ${Math.round(m.elapsedSeconds)} s.`,
  );
  if (rootless) {
    lines.push(
      'Rootless: every forwarder runs as a throwaway unprivileged user; the container is rootlesskit + slirp4netns (its own user and network namespace); ' +
        "the client is on the host side's 127.0.0.1, the servers on the container's 127.0.0.1 (direct and portferry-loopback: servers on the host side's loopback).",
    );
  }
  const wl = r.workloads;
  if (wl.includes('cps') || wl.includes('cps-pinned')) {
    lines.push(`Connections: ${m.connLoops ?? 4} parallel loops of connect, 32-byte request, 128-byte reply, close.`);
  }
  if (m.pinnedCpu !== undefined) lines.push(`1 CPU: client, forwarder (every thread of its process tree) and servers pinned to CPU ${m.pinnedCpu} with taskset.`);
  lines.push(`Tools: ${Object.entries(m.tools).map(([k, v]) => `${k} ${v}`).join(', ') || '—'}`);
  lines.push('');
  const extra = (w: WorkloadId): string => (WORKLOADS[w].primary === 'tps' ? ', p50/p99' : w === 'idle' ? ', forwarder RSS' : '');
  // CPU per GB is measured around the TCP 1 stream → run: no column without it.
  const cpu = wl.includes('tcp-1');
  const head = ['path', ...wl.map((w) => `${WORKLOADS[w].title} (${WORKLOADS[w].unit}${extra(w)})`), ...(cpu ? ['forwarder CPU s/GB'] : [])];
  lines.push(`| ${head.join(' | ')} |`);
  lines.push(`|${head.map((_, i) => (i === 0 ? '---' : '---:')).join('|')}|`);
  const notes: string[] = [];
  for (const p of r.paths) {
    if (p.status === 'skipped') {
      lines.push(`| ${[p.name, ...wl.map(() => 'skipped'), ...(cpu ? ['—'] : [])].join(' | ')} |`);
      notes.push(`${p.name}: skipped — ${p.reason ?? 'not available'}`);
      continue;
    }
    const row = wl.map((w) => {
      const c = r.cells.find((x) => x.path === p.name && x.workload === w);
      if (c === undefined) return 'n/a';
      let text = cellText(c);
      if (c.status !== 'ok' && c.reason !== undefined) {
        // One note per distinct reason: a path that did not start is one note, not one per cell.
        const note = `${p.name}: ${c.status === 'failed' ? 'FAILED' : 'n/a'} — ${c.reason}`;
        let i = notes.indexOf(note);
        if (i < 0) i = notes.push(note) - 1;
        text += ` [${i + 1}]`;
      }
      return text;
    });
    lines.push(`| ${[p.name, ...row, ...(cpu ? [cpuText(r.cells, p.name)] : [])].join(' | ')} |`);
  }
  lines.push('');
  lines.push('Paths:');
  for (const p of r.paths) lines.push(`- ${p.name}: ${p.description}`);
  if (notes.length > 0) {
    lines.push('');
    lines.push('Notes:');
    notes.forEach((n, i) => lines.push(`${i + 1}. ${n.replace(/\|/g, '\\|')}`));
  }
  return `${lines.join('\n')}\n`;
}

// -- SVG ------------------------------------------------------------------------------------------

const COLOURS: Readonly<Record<PathName, string>> = {
  direct: '#7f7f7f',
  portferry: '#d62728',
  iptables: '#1f77b4',
  nftables: '#17becf',
  'docker-proxy': '#2ca02c',
  socat: '#ff7f0e',
  'haproxy-splice': '#9467bd',
  nginx: '#8c564b',
  'portferry-2w': '#ff9896',
  'portferry-base': '#e377c2',
  naive: '#bcbd22',
  'portferry-loopback': '#ff9896',
  'portferry-netns': '#d62728',
  'portferry-netns-base': '#e377c2',
  'rootlesskit-builtin': '#1f77b4',
  'rootlesskit-slirp4netns': '#17becf',
  pasta: '#2ca02c',
};

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

/**
 * Grouped bars: one group per workload with a ratio, one bar per measured path, height = ratio to
 * direct. A failed cell is a red × on the baseline; a cell that does not apply is left empty.
 */
export function renderSvg(r: BenchResult): string {
  const workloads = r.workloads.filter((w) => WORKLOADS[w].ratio);
  const paths = r.paths.filter((p) => p.status === 'measured').map((p) => p.name);
  const ratios = r.cells.flatMap((c) => (c.ratio === undefined ? [] : [c.ratio]));
  const top = Math.max(1.2, Math.ceil(Math.max(0, ...ratios) * 5) / 5);
  const bar = 12;
  const gap = 18;
  const groupW = Math.max(1, paths.length) * bar + gap;
  const left = 56;
  const plotH = 260;
  const topPad = 48;
  const width = left + Math.max(1, workloads.length) * groupW + 20;
  const legendRows = Math.ceil(paths.length / 4);
  const height = topPad + plotH + 70 + legendRows * 18;
  const y = (v: number): number => topPad + plotH - (v / top) * plotH;
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="11">`);
  out.push(`<rect x="0" y="0" width="${width}" height="${height}" fill="#ffffff"/>`);
  out.push(`<text x="${left}" y="18" font-size="14" font-weight="bold">${esc('Throughput relative to no forwarder (direct = 1.0), higher is better')}</text>`);
  out.push(`<text x="${left}" y="34" fill="#555">${esc(`${r.meta.date} · kernel ${r.meta.kernel} · ${r.meta.cpus} CPU · Node ${r.meta.node} · median of ${r.meta.reps}`)}</text>`);
  for (let v = 0; v <= top + 1e-9; v += 0.2) {
    const yy = y(v).toFixed(1);
    out.push(`<line x1="${left}" y1="${yy}" x2="${width - 20}" y2="${yy}" stroke="${Math.abs(v - 1) < 1e-9 ? '#444' : '#ddd'}" stroke-width="1"${Math.abs(v - 1) < 1e-9 ? ' stroke-dasharray="4 3"' : ''}/>`);
    out.push(`<text x="${left - 6}" y="${(y(v) + 4).toFixed(1)}" text-anchor="end">${v.toFixed(1)}</text>`);
  }
  workloads.forEach((w, gi) => {
    const gx = left + gi * groupW + gap / 2;
    paths.forEach((p, pi) => {
      const c = r.cells.find((x) => x.path === p && x.workload === w);
      const x = gx + pi * bar;
      if (c?.status === 'failed') {
        out.push(`<text x="${(x + bar / 2).toFixed(1)}" y="${(y(0) - 3).toFixed(1)}" text-anchor="middle" fill="#d00" font-weight="bold"><title>${esc(`${p} / ${w}: FAILED — ${c.reason ?? ''}`)}</title>×</text>`);
        return;
      }
      if (c?.ratio === undefined) return;
      const h = Math.max(0.5, y(0) - y(c.ratio));
      out.push(
        `<rect x="${x.toFixed(1)}" y="${(y(0) - h).toFixed(1)}" width="${bar - 2}" height="${h.toFixed(1)}" fill="${COLOURS[p]}"><title>${esc(`${p} / ${WORKLOADS[w].title}: ${c.ratio.toFixed(2)}× direct`)}</title></rect>`,
      );
    });
    const label = WORKLOADS[w].title;
    out.push(`<text x="${(gx + (paths.length * bar) / 2).toFixed(1)}" y="${(y(0) + 16).toFixed(1)}" text-anchor="middle">${esc(label.length > 18 ? `${label.slice(0, 17)}…` : label)}</text>`);
  });
  out.push(`<line x1="${left}" y1="${y(0)}" x2="${width - 20}" y2="${y(0)}" stroke="#000"/>`);
  paths.forEach((p, i) => {
    const lx = left + (i % 4) * 150;
    const ly = topPad + plotH + 44 + Math.floor(i / 4) * 18;
    out.push(`<rect x="${lx}" y="${ly - 9}" width="10" height="10" fill="${COLOURS[p]}"/>`);
    out.push(`<text x="${lx + 14}" y="${ly}">${esc(p)}</text>`);
  });
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}
