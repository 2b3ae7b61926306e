// The syslog destination of portferry-docker-proxy: lines go through util-linux logger(1) to a
// unix datagram socket (here one of the test's own, in a temp dir, instead of /dev/log), one
// process per run of lines that share a priority, in order, with the pino level as priority.
import t from 'tap';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { SyslogDestination } from '../../src/docker/log-sink.js';
import { skipUnless } from '../helpers/env.js';
import { until } from '../helpers/net.js';
import { PYTHON } from './harness.js';

const RECEIVER = 'import socket,sys\ns=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM)\ns.bind(sys.argv[1])\nprint("ready",flush=True)\nwhile True:\n  print(s.recv(65536).decode(),flush=True)\n';

t.test('error and warning lines reach the syslog socket with their priorities, in order', skipUnless({ tools: [PYTHON, 'logger'] }), async (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'pfsys-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true, maxRetries: 5 }));
  const sock = path.join(dir, 'log');
  const receiver = spawn(PYTHON, ['-c', RECEIVER, sock], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => receiver.kill('SIGKILL'));
  const got: string[] = [];
  const lines = readline.createInterface({ input: receiver.stdout! });
  await new Promise<void>((resolve) => lines.once('line', () => resolve()));
  lines.on('line', (l) => got.push(l));

  const dest = new SyslogDestination('/usr/bin/logger', sock);
  dest.write('{"level":50,"msg":"first error"}\n');
  dest.write('{"level":50,"msg":"second error"}\n');
  dest.write('{"level":40,"msg":"a warning"}\n');
  dest.write('{"level":30,"msg":"info"}\n');
  await dest.flush(5000);
  await until(() => got.length >= 4, 5000, 'four syslog datagrams');
  // <27> = facility daemon (3) * 8 + err (3); <28> warning; <30> info.
  t.match(got[0], /^<27>.*portferry-docker-proxy\[\d+\]: \{"level":50,"msg":"first error"\}$/);
  t.match(got[1], /^<27>.*"second error"/);
  t.match(got[2], /^<28>.*"a warning"/);
  t.match(got[3], /^<30>.*"info"/);
});
