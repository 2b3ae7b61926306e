// The demo's HTTP backend, as its own process: started inside the demo's container namespace
// (or on the host's loopback as a fallback). Listens on HOST:PORT from argv, prints `ready PORT`.
import http from 'node:http';
import type { AddressInfo } from 'node:net';

const host = process.argv[2] ?? '127.0.0.1';
const port = Number(process.argv[3] ?? 0);
const where = process.argv[4] ?? 'the host';

const server = http.createServer((req, res) => {
  const body = `hello from the portferry demo backend\nit runs in ${where}, listening on ${host}:${(server.address() as AddressInfo).port}\nyou reached it through portferry; the backend saw ${req.socket.remoteAddress}:${req.socket.remotePort}\n`;
  res.writeHead(200, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body) });
  res.end(body);
});
server.listen(port, host, () => {
  process.stdout.write(`ready ${(server.address() as AddressInfo).port}\n`);
});
// The parent holds our stdin; when it goes away, so do we.
process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
process.on('SIGTERM', () => process.exit(0));
