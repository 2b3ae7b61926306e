// Regression tests for the lifecycle races of issue 10 (manager and forwarder), each of which
// failed on the manager before the queue: two adds of one name both bound (the first listener was
// orphaned and kept its port after remove), and close(0) during an add left the port bound.
import t from 'tap';
import net from 'node:net';
import { PortferryError } from '../../src/errors.js';
import { Forwarder } from '../../src/forwarder/forwarder.js';
import { createLogger } from '../../src/log.js';
import { DirectDialer } from '../../src/proxy/dialer.js';
import { Manager } from '../../src/proxy/manager.js';
import { testMapping } from '../helpers/mapping.js';
import { freePort } from '../helpers/net.js';

const logger = createLogger({ level: 'silent' });

/** Whether the port can be bound right now (nothing of ours holds it). */
async function bindable(port: number): Promise<boolean> {
  const s = net.createServer();
  const ok = await new Promise<boolean>((resolve) => {
    s.once('error', () => resolve(false));
    s.listen({ port, host: '127.0.0.1', exclusive: true }, () => resolve(true));
  });
  if (ok) await new Promise<void>((r) => s.close(() => r()));
  return ok;
}

t.test('manager: two concurrent adds of the same name — one fails, and remove() frees the port', async (t) => {
  const manager = new Manager({ logger, dialerFor: () => new DirectDialer() });
  t.teardown(() => manager.destroy());
  const [p1, p2] = [await freePort(), await freePort()];
  const results = await Promise.allSettled([
    manager.add([testMapping({ name: 'web', hostPort: p1, containerPort: 1 })]),
    manager.add([testMapping({ name: 'web', hostPort: p2, containerPort: 1 })]),
  ]);
  t.equal(results.filter((r) => r.status === 'fulfilled').length, 1, 'exactly one add succeeds');
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  t.ok(failed?.reason instanceof PortferryError, 'the other is a coded error');
  t.match(JSON.stringify((failed?.reason as PortferryError).toJSON()), /exists already/);
  t.equal(manager.list().length, 1);
  await manager.remove('web');
  t.ok(await bindable(p1), 'first port free after remove');
  t.ok(await bindable(p2), 'second port never stayed bound');
});

t.test('manager: close(0) while an add is binding — nothing stays bound, list() is empty', async (t) => {
  const manager = new Manager({ logger, dialerFor: () => new DirectDialer() });
  t.teardown(() => manager.destroy());
  const port = await freePort();
  const adding = manager.add([testMapping({ name: 'late', hostPort: port, containerPort: 1 })]);
  const closing = manager.close(0);
  const added = await adding.then(
    () => 'resolved',
    (e: unknown) => (e as PortferryError).code,
  );
  await closing;
  t.ok(added === 'resolved' || added === 'PF_SHUTTING_DOWN', `add ended (${added})`);
  t.same(manager.list(), [], 'nothing listed');
  t.ok(await bindable(port), 'port free after close');
  await t.rejects(manager.add([testMapping({ name: 'after', hostPort: await freePort(), containerPort: 1 })]), { code: 'PF_SHUTTING_DOWN' }, 'add after close refused with a code');
});

t.test('manager: destroy() while an add is binding — the add fails and its port is free', async (t) => {
  const manager = new Manager({ logger, dialerFor: () => new DirectDialer() });
  const port = await freePort();
  const adding = manager.add([testMapping({ name: 'x', hostPort: port, containerPort: 1 })]);
  await new Promise((r) => setImmediate(r));
  manager.destroy();
  await adding.catch(() => undefined);
  t.same(manager.list(), []);
  t.ok(await bindable(port), 'port free after destroy');
});

t.test('forwarder: concurrent adds of one name through the queue, ids never reused', async (t) => {
  const f = new Forwarder({ logger });
  t.teardown(() => f.destroy());
  const [p1, p2, p3] = [await freePort(), await freePort(), await freePort()];
  const results = await Promise.allSettled([
    f.add([testMapping({ name: 'db', hostPort: p1, containerPort: 1 })], { origin: 'api' }),
    f.add([testMapping({ name: 'db', hostPort: p2, containerPort: 1 })], { origin: 'api' }),
  ]);
  t.equal(results.filter((r) => r.status === 'fulfilled').length, 1);
  t.ok(await bindable(p2), 'the refused add bound nothing');
  const [first] = f.list();
  t.equal(first?.id, 1);
  await f.remove(1);
  const [again] = await f.add([testMapping({ name: 'db', hostPort: p3, containerPort: 1 })], { origin: 'api' });
  t.ok((again?.id ?? 0) > 1, `a new id (${again?.id}), not the removed 1`);
  await t.rejects(f.remove(1), { code: 'PF_API_NOT_FOUND' });
});

t.test('forwarder: close(0) while an add is queued — the port is free afterwards', async (t) => {
  const f = new Forwarder({ logger });
  t.teardown(() => f.destroy());
  const port = await freePort();
  const adding = f.add([testMapping({ name: 'q', hostPort: port, containerPort: 1 })], { origin: 'api' });
  await f.close(0);
  await adding.catch(() => undefined);
  t.same(f.list(), []);
  t.ok(await bindable(port));
});

// Issue 20 bug 5, at the forwarder: a change the recorder (the state file) refuses is undone and
// fails with the recorder's error; the recorder sees each change once, as it leaves the registry.
t.test('forwarder: a recorder that fails undoes add, remove and replace; ids stay reserved', async (t) => {
  const f = new Forwarder({ logger });
  t.teardown(() => f.destroy());
  const [p1, p2, p3] = [await freePort(), await freePort(), await freePort()];
  const seen: { nextId: number; ids: number[] }[] = [];
  let fail = false;
  f.recordWith(async ({ nextId, entries }) => {
    seen.push({ nextId, ids: entries.map((e) => e.id) });
    if (fail) throw new PortferryError('PF_STATE_WRITE', 'disk full');
  });
  const [a] = await f.add([testMapping({ name: 'a', hostPort: p1, containerPort: 1 })], { origin: 'api', owner: 'ctr' });
  t.same(seen, [{ nextId: 2, ids: [1] }], 'the add was recorded once, with its listeners bound');
  fail = true;
  await t.rejects(f.add([testMapping({ name: 'b', hostPort: p2, containerPort: 1 })], { origin: 'api' }), { code: 'PF_STATE_WRITE' });
  t.ok(await bindable(p2), 'the add that was not recorded is unbound');
  await t.rejects(f.remove(a?.id ?? 0), { code: 'PF_STATE_WRITE' });
  t.notOk(await bindable(p1), 'the remove that was not recorded was not made');
  await t.rejects(f.replaceOwner('ctr', [testMapping({ name: 'c', hostPort: p3, containerPort: 1 })]), { code: 'PF_STATE_WRITE' });
  t.notOk(await bindable(p1), 'the replaced set is bound again');
  t.ok(await bindable(p3), 'the replacing set is not');
  await t.rejects(f.removeOwner('ctr'), { code: 'PF_STATE_WRITE' });
  t.same(f.list().map((e) => [e.id, e.mapping.name, e.owner]), [[1, 'a', 'ctr']], 'the registry is as before');
  t.same(seen.slice(1).map((s) => s.ids), [[1, 2], [], [3], []], 'each refused change was offered once, as it would have left the registry');
  fail = false;
  const [d] = await f.add([testMapping({ name: 'd', hostPort: p2, containerPort: 1 })], { origin: 'api' });
  t.equal(d?.id, 4, 'ids handed out to refused changes are not handed out again');
  t.equal(seen.at(-1)?.nextId, 5);
});
