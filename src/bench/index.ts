// The benchmark's entry for `portferry bench` (src/cli/bench.ts loads it when the command runs).
export { runBench, BenchInterrupted, CONN_LOOPS, FULL, QUICK, type BenchOptions } from './run.js';
export { renderMarkdown, renderSvg } from './report.js';
export { runRootlessBench, type RootlessBenchOptions, type RootlessWorkloadId } from './rootless.js';
export { PATH_NAMES, ROOTLESS_PATH_NAMES, ROOTLESS_WORKLOAD_IDS, SCENARIOS, WORKLOAD_IDS, type BenchResult, type PathName, type Scenario, type WorkloadId } from './types.js';
