// Descriptor limits and UDP (issue 14 item 1). The forwarder (built code) runs in a throwaway
// namespace under a small `prlimit --nofile`. Before the fix, the address re-scan of a listener on
// 0.0.0.0 crashed the process under EMFILE (os.networkInterfaces() throws, the rejection was not
// caught), and UDP flows from many client ports took every descriptor, so TCP could no longer
// accept or dial. Both tests fail on that code.
import t from 'tap';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { skipUnless } from '../helpers/env.js';
import { DescriptorBudget, UDP_FLOW_SHARE, readNofileLimit } from '../../src/limits.js';
import { makeNamespace, ping, root, startForwarder } from '../fixtures/udp/netns.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// N client sockets, each sends one datagram to 127.0.0.1:PORT (inside the namespace).
const MANY_CLIENTS = `
  const dgram = require('node:dgram');
  const [port, n] = process.argv.slice(1).map(Number);
  let left = n;
  for (let i = 0; i < n; i++) {
    const s = dgram.createSocket('udp4');
    s.on('error', () => {});
    s.bind(0, '127.0.0.1', () => s.send(Buffer.from('x'), port, '127.0.0.1', () => { if (--left === 0) setTimeout(() => process.exit(0), 300); }));
  }`;

t.test('readNofileLimit reads this process limit; the budget is half of it', async (t) => {
  const limit = readNofileLimit();
  t.ok(limit !== null && limit.soft > 0 && limit.hard >= limit.soft, `soft ${limit?.soft}, hard ${limit?.hard}`);
  t.equal(new DescriptorBudget().udpFlowLimit(), Number.isFinite(limit?.soft) ? Math.floor((limit?.soft ?? 0) * UDP_FLOW_SHARE) : Infinity, "this process's budget");
  // Taking is checked on a budget of a known size (the host's own limit may be a million).
  const budget = new DescriptorBudget(256);
  t.equal(budget.udpFlowLimit(), Math.floor(256 * UDP_FLOW_SHARE));
  let taken = 0;
  while (taken < 1000 && budget.takeUdpFlow()) taken++;
  t.equal(taken, budget.udpFlowLimit(), 'takes stop at the budget');
  budget.releaseUdpFlow();
  t.ok(budget.takeUdpFlow(), 'a released descriptor can be taken again');
});

t.test('EMFILE during the address re-scan does not kill the forwarder', skipUnless({ root: true, tools: ['ip', 'prlimit'] }), async (t) => {
  const ns = await makeNamespace(t);
  const fwd = await startForwarder(t, ns, '0.0.0.0', { nofile: 128, rescanMs: 50 });
  const { opened } = JSON.parse(await fwd.command('hog')) as { opened: number };
  t.ok(opened > 0, `every descriptor taken (${opened} more opened)`);
  await sleep(600); // a dozen re-scans, each failing with EMFILE
  t.ok(fwd.alive(), 'the forwarder is still running');
  t.same(JSON.parse(await fwd.command('release')), { released: true }, 'and answers');
  const [r] = await ping(ns, '127.0.0.1', fwd.port, ['127.0.0.1']);
  t.ok(r?.ok, 'and forwards once descriptors are free again');
});

t.test('UDP flows from 400 client ports under a 256-descriptor limit: refused beyond the budget, TCP keeps descriptors', skipUnless({ root: true, tools: ['ip', 'prlimit'] }), async (t) => {
  const ns = await makeNamespace(t);
  const fwd = await startForwarder(t, ns, '0.0.0.0', { nofile: 256, rescanMs: 100 });
  await promisify(execFile)('ip', ['netns', 'exec', ns, 'env', '-u', 'NODE_OPTIONS', process.execPath, '-e', MANY_CLIENTS, String(fwd.port), '400'], { timeout: 20_000 });
  await sleep(300); // re-scans while the flows are open
  t.ok(fwd.alive(), 'the forwarder is still running');
  const stats = JSON.parse(await fwd.command('stats')) as { flows: number; drops: Record<string, number> };
  t.ok(stats.flows <= 128, `flows stop at half the limit (${stats.flows})`);
  t.ok((stats.drops['descriptor-budget'] ?? 0) > 0, `the rest are refused and counted (${JSON.stringify(stats.drops)})`);
  const { opened } = JSON.parse(await fwd.command('hog')) as { opened: number };
  t.ok(opened >= 64, `descriptors are left for TCP accepts and dials (${opened} could still be opened)`);
  await fwd.command('release');
});

// Node raises the soft limit to the hard one itself at startup, so the script lowers it first
// (prlimit on its own pid), as a parent or a supervisor could have done after start.
const RAISE = (root: string, path: string): string => `
  import { execFileSync } from 'node:child_process';
  import { raiseNofileLimit, descriptors } from ${JSON.stringify(`${root}/dist/limits.js`)};
  import { memoryLogger } from ${JSON.stringify(`${root}/dist/log.js`)};
  execFileSync('prlimit', ['--pid', String(process.pid), '--nofile=256:1024']);
  process.env.PATH = ${JSON.stringify(path)};
  const { logger, records } = memoryLogger('info');
  const got = raiseNofileLimit(logger);
  console.log(JSON.stringify({ got, budget: descriptors.udpFlowLimit(), records }));`;

async function raiseIn(path: string): Promise<{ got: { soft: number; hard: number }; budget: number; records: Record<string, unknown>[] }> {
  const { stdout } = await promisify(execFile)('env', ['-u', 'NODE_OPTIONS', process.execPath, '--input-type=module', '-e', RAISE(root, path)], { timeout: 20_000 });
  return JSON.parse(stdout) as { got: { soft: number; hard: number }; budget: number; records: Record<string, unknown>[] };
}

t.test('raiseNofileLimit lifts the soft limit to the hard one and logs the figure', skipUnless({ tools: ['prlimit'] }), async (t) => {
  const out = await raiseIn(process.env['PATH'] ?? '/usr/bin:/bin');
  t.same(out.got, { soft: 1024, hard: 1024 });
  t.equal(out.budget, 512, 'the UDP flow budget follows the raised limit');
  t.match(out.records, [{ level: 30, msg: 'descriptor limit', nofile: 1024, hard: 1024, raisedFrom: 256, udpFlowBudget: 512 }]);
});

t.test('raiseNofileLimit without prlimit: a warning, and the process runs with its soft limit', skipUnless({ tools: ['prlimit'] }), async (t) => {
  const out = await raiseIn('/nonexistent');
  t.equal(out.got.soft, 256);
  t.match(out.records, [{ level: 40, err: 'ENOENT' }, { level: 30, msg: 'descriptor limit', nofile: 256, udpFlowBudget: 128 }]);
});
