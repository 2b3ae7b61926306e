// Reads a /metrics page the way Prometheus does: scraped over HTTP, parsed by the reference
// parser of Prometheus's own Python client (Debian's python3-prometheus-client, under Debian's
// /usr/bin/python3), not by a parser of ours.
import { execFileSync, spawnSync } from 'node:child_process';
import { inCI } from './env.js';

const PYTHON = '/usr/bin/python3';

const PARSE = `
import json, math, sys
from prometheus_client.parser import text_string_to_metric_families
def num(v):  # JSON has no NaN or Inf: spell them as JavaScript's Number() reads them
    return v if math.isfinite(v) else ('NaN' if math.isnan(v) else ('Infinity' if v > 0 else '-Infinity'))
out = []
for f in text_string_to_metric_families(sys.stdin.read()):
    out.append({"name": f.name, "type": f.type, "help": f.documentation,
                "samples": [{"name": s.name, "labels": s.labels, "value": num(s.value)} for s in f.samples]})
json.dump(out, sys.stdout)
`;

export interface MetricFamily {
  /** As the parser names it: a counter's family name is without `_total`, its samples have it. */
  readonly name: string;
  readonly type: string;
  readonly help: string;
  readonly samples: readonly { readonly name: string; readonly labels: Readonly<Record<string, string>>; readonly value: number }[];
}

/** Why the parser cannot run here (skip reason), or undefined; under CI=true a missing parser throws. */
export function promParserMissing(): string | undefined {
  const ok = spawnSync(PYTHON, ['-c', 'import prometheus_client.parser'], { stdio: 'ignore' }).status === 0;
  if (ok) return undefined;
  const reason = `needs ${PYTHON} with prometheus_client (Debian python3-prometheus-client; bash test/setup.sh installs it)`;
  if (inCI) throw new Error(`prerequisite missing under CI=true (no skips allowed): ${reason}`);
  return reason;
}

export function parsePrometheusText(text: string): MetricFamily[] {
  const families = JSON.parse(execFileSync(PYTHON, ['-c', PARSE], { input: text, encoding: 'utf8' })) as MetricFamily[];
  return families.map((f) => ({ ...f, samples: f.samples.map((s) => ({ ...s, value: Number(s.value) })) }));
}

/** GET the page; returns the status, the content type, the raw text and the parsed families (200 only). */
export async function scrape(url: string): Promise<{ status: number; contentType: string | null; text: string; families: MetricFamily[] }> {
  const res = await fetch(url);
  const text = await res.text();
  return { status: res.status, contentType: res.headers.get('content-type'), text, families: res.status === 200 ? parsePrometheusText(text) : [] };
}

/** The value of the sample `name` whose labels include `labels`; undefined when there is none. */
export function sampleValue(families: readonly MetricFamily[], name: string, labels: Readonly<Record<string, string>> = {}): number | undefined {
  for (const f of families) {
    for (const s of f.samples) {
      if (s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v)) return s.value;
    }
  }
  return undefined;
}
