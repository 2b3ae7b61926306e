// The `naive` path of `portferry bench`: the forwarder any Node user could write in ten lines, as
// a baseline. TCP: net.createServer + pipe() both ways. UDP: one socket per client that sends to
// the target, replies sent back from the listening socket (no expiry: a benchmark's flows are few).
// No PROXY protocol, no limits, no timeouts, no logging: only what it takes not to crash.
//   node naive-proxy.mjs tcp:LISTEN_PORT:TARGET_IP:TARGET_PORT … udp:LISTEN_PORT:TARGET_IP:TARGET_PORT …
// Prints "ready" on stdout once every port listens.
import net from 'node:net';
import dgram from 'node:dgram';

function tcp(port, host, targetPort) {
  return new Promise((listening) => {
    net
      .createServer((client) => {
        const target = net.connect(targetPort, host);
        client.pipe(target).pipe(client);
        client.on('error', () => target.destroy());
        target.on('error', () => client.destroy());
      })
      .listen({ port, backlog: 4096 }, listening);
  });
}

function udp(port, host, targetPort) {
  const server = dgram.createSocket('udp4');
  const flows = new Map();
  server.on('message', (msg, from) => {
    const key = `${from.address}:${from.port}`;
    let flow = flows.get(key);
    if (flow === undefined) {
      flow = dgram.createSocket('udp4');
      flow.on('message', (reply) => server.send(reply, from.port, from.address));
      flows.set(key, flow);
    }
    flow.send(msg, targetPort, host);
  });
  return new Promise((listening) => server.bind(port, listening));
}

const started = process.argv.slice(2).map((spec) => {
  const [proto, port, host, targetPort] = spec.split(':');
  return (proto === 'udp' ? udp : tcp)(Number(port), host, Number(targetPort));
});
await Promise.all(started);
process.stdout.write('ready\n');
