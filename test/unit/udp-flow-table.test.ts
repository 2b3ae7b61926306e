// The flow table's ordering (least recently used first), touch, remove and sweep, without sockets.
import t from 'tap';
import { FlowTable, type FlowLink } from '../../src/proxy/flow-table.js';

class F implements FlowLink<F> {
  lastActive = 0;
  older: F | null = null;
  newer: F | null = null;
  samePort: F | null = null;
  readonly ip: string;
  readonly port: number;
  /** 'a' is 10.0.0.1:1000, 'b' 10.0.0.1:1001 …; 'x@a' shares a's port from another address. */
  constructor(readonly key: string) {
    const [host, base] = key.includes('@') ? ['10.0.0.9', key.split('@')[1] ?? 'a'] : ['10.0.0.1', key];
    this.ip = host;
    this.port = 1000 + base.charCodeAt(0) - 97;
  }
}

const keys = (table: FlowTable<F>): string[] => table.snapshot().map((f) => f.key);

t.test('touch moves a flow to the newest end; oldest() is the least recently used', async (t) => {
  const table = new FlowTable<F>();
  const [a, b, c] = [new F('a'), new F('b'), new F('c')];
  table.insert(a, 1);
  table.insert(b, 2);
  table.insert(c, 3);
  t.same(keys(table), ['a', 'b', 'c']);
  table.touch(a, 4);
  t.same(keys(table), ['b', 'c', 'a']);
  table.touch(a, 5); // already newest
  table.touch(c, 6);
  t.same(keys(table), ['b', 'a', 'c']);
  t.equal(table.oldest(), b);
  t.equal(table.get('10.0.0.1', 1000), a);
  t.equal(table.size, 3);
});

t.test('remove unlinks from both ends and the middle; removing twice is harmless', async (t) => {
  const table = new FlowTable<F>();
  const fs = ['a', 'b', 'c', 'd'].map((k) => new F(k));
  fs.forEach((f, i) => table.insert(f, i));
  t.ok(table.remove(fs[1] as F));
  t.notOk(table.remove(fs[1] as F));
  t.same(keys(table), ['a', 'c', 'd']);
  table.remove(fs[0] as F);
  table.remove(fs[3] as F);
  t.same(keys(table), ['c']);
  t.equal(table.oldest(), fs[2]);
  table.remove(fs[2] as F);
  t.equal(table.oldest(), null);
  t.equal(table.size, 0);
});

t.test('sweep removes exactly the flows last active before the cutoff, oldest first', async (t) => {
  const table = new FlowTable<F>();
  const fs = ['a', 'b', 'c', 'd'].map((k) => new F(k));
  fs.forEach((f, i) => table.insert(f, i * 10)); // 0, 10, 20, 30
  table.touch(fs[0] as F, 40); // a is now the newest
  const gone: string[] = [];
  t.equal(table.sweep(25, (f) => gone.push(f.key)), 2);
  t.same(gone, ['b', 'c']);
  t.same(keys(table), ['d', 'a']);
  t.equal(table.get('10.0.0.1', 1001), undefined);
  table.clear();
  t.equal(table.size, 0);
  t.same(keys(table), []);
});

t.test('clients that share a port: found by address, removable in any order, size counts each', async (t) => {
  const table = new FlowTable<F>();
  const a = new F('a');
  const xa = new F('x@a');
  const b = new F('b');
  [a, xa, b].forEach((f, i) => table.insert(f, i));
  t.equal(a.port, xa.port, 'same port, different address');
  t.equal(table.get('10.0.0.1', a.port), a);
  t.equal(table.get('10.0.0.9', a.port), xa);
  t.equal(table.get('10.0.0.7', a.port), undefined, 'an unknown address on a known port');
  t.equal(table.size, 3);
  t.ok(table.remove(xa), 'the head of the port chain (inserted last)');
  t.equal(table.get('10.0.0.1', a.port), a, 'the other flow on that port is still found');
  table.insert(xa, 5);
  t.ok(table.remove(a), 'the tail of the chain');
  t.notOk(table.remove(a));
  t.equal(table.get('10.0.0.9', a.port), xa);
  t.equal(table.size, 2);
  t.same(table.sweep(10, () => {}), 2);
  t.equal(table.get('10.0.0.9', a.port), undefined);
  t.equal(table.size, 0);
});
