// The benchmark's entry for `portferry bench` (src/cli/bench.ts loads it when the command runs).
export { runBench, BenchInterrupted, CONN_LOOPS, FULL, QUICK, type BenchOptions } from './run.js';
export { renderMarkdown, renderSvg } from './report.js';
export { PATH_NAMES, WORKLOAD_IDS, type BenchResult, type PathName, type WorkloadId } from './types.js';
