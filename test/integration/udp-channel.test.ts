// The UDP channel wrapper in its unconnected form (used when a socket handed over from a
// namespace helper cannot be connected): sends name the target, and only the target's datagrams
// come through.
import t from 'tap';
import dgram from 'node:dgram';
import { wrapDgram } from '../../src/proxy/dialer.js';
import { until } from '../helpers/net.js';

async function bound(teardown: (fn: () => unknown) => void, type: 'udp4' | 'udp6', host: string): Promise<dgram.Socket> {
  const s = dgram.createSocket(type);
  await new Promise<void>((r) => s.bind(0, host, () => r()));
  teardown(() => s.close());
  return s;
}

for (const [type, host] of [['udp4', '127.0.0.1'], ['udp6', '::1']] as const) {
  t.test(`unconnected channel (${type}): reaches its target, hears only its target`, async (t) => {
    const target = await bound(t.teardown, type, host);
    const stranger = await bound(t.teardown, type, host);
    const raw = dgram.createSocket(type);
    await new Promise<void>((r) => raw.bind(0, host, () => r()));
    const channel = wrapDgram(raw, { ip: host, port: target.address().port });
    t.teardown(() => channel.close());
    const heard: string[] = [];
    channel.onMessage((m) => heard.push(m.toString()));
    const atTarget: string[] = [];
    target.on('message', (m, r) => {
      atTarget.push(m.toString());
      // The stranger's datagram is queued at the channel's socket before the reply is sent, so the
      // channel reads it first: once the reply is heard, the stranger's was already filtered.
      stranger.send('from a stranger', r.port, r.address, () => target.send(`reply to ${m.toString()}`, r.port, r.address));
    });
    channel.send([Buffer.from('hel'), Buffer.from('lo')]);
    await until(() => heard.length === 1 && atTarget.length === 1, 5000, 'the exchange');
    t.same(atTarget, ['hello'], 'the target got the datagram, parts joined');
    t.same(heard, ['reply to hello'], "only the target's reply was delivered");
  });
}
