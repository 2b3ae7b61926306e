// src/addr.ts is the one canonical text of an address: the one the kernel reports for a peer
// (rinfo.address, socket.remoteAddress), so a target written in any spelling matches it.
import t from 'tap';
import dgram from 'node:dgram';
import net from 'node:net';
import { canonicalIP, formatEndpoint, nonUnicastKind } from '../../src/addr.js';

t.test('canonicalIP equals what libuv prints (SocketAddress) for many spellings', async (t) => {
  const cases = ['0:0:0:0:0:0:0:1', 'FD00:0000:0000:0000:0000:0000:0000:0002', '2001:DB8::0:0:1', '2001:db8:0:0:1:0:0:1', 'fe80:0:0:0:abcd:0:0:0', '::ffff:10.1.2.3', '::FFFF:A01:203', '1:2:3:4:5:6:7:8', '1::', '127.0.0.1'];
  for (const c of cases) {
    const family = net.isIPv6(c) ? 'ipv6' : 'ipv4';
    t.equal(canonicalIP(c), new net.SocketAddress({ address: c, family }).address, c);
  }
});

t.test('a datagram from ::1 reports the address canonicalIP writes for 0:0:0:0:0:0:0:1', async (t) => {
  const a = dgram.createSocket('udp6');
  const b = dgram.createSocket('udp6');
  t.teardown(() => {
    a.close();
    b.close();
  });
  await new Promise<void>((r) => a.bind(0, '::1', () => r()));
  await new Promise<void>((r) => b.bind(0, '0:0:0:0:0:0:0:1', () => r()));
  const got = new Promise<dgram.RemoteInfo>((r) => a.once('message', (_m, rinfo) => r(rinfo)));
  b.send('x', a.address().port, '::1');
  t.equal((await got).address, canonicalIP('0:0:0:0:0:0:0:1'));
});

t.test('non-unicast kinds and formatting', async (t) => {
  t.equal(nonUnicastKind('0.0.0.0'), 'unspecified');
  t.equal(nonUnicastKind('::'), 'unspecified');
  t.equal(nonUnicastKind('255.255.255.255'), 'broadcast');
  t.equal(nonUnicastKind('239.1.1.1'), 'multicast');
  t.equal(nonUnicastKind('ff05::2'), 'multicast');
  t.equal(nonUnicastKind('10.0.0.1'), null);
  t.equal(nonUnicastKind('fd00::1'), null);
  t.equal(formatEndpoint({ ip: '::1', port: 80 }), '[::1]:80');
  t.equal(formatEndpoint({ ip: undefined as unknown as string, port: 80 }), 'undefined:80', 'input that is not well-formed still formats');
});
