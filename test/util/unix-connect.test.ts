// connectUnixWhenListening against the two "not listening yet" states a just-started QEMU
// shows: a socket file nobody listens on (bound, listen() not reached: ECONNREFUSED) and no
// file at all (ENOENT). A stale socket left by a killed process reproduces the first exactly.
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connectUnixWhenListening } from '../../src/util/unix-connect.js';

/** Leaves a socket file at `path` with no listener behind it (its process was SIGKILLed). */
function staleSocket(path: string): void {
  const script = `require('net').createServer().listen(${JSON.stringify(path)}, () => process.kill(process.pid, 'SIGKILL'))`;
  spawnSync(process.execPath, ['-e', script]);
  if (!existsSync(path)) throw new Error(`no stale socket at ${path}`);
}

function tempDir(t: { teardown: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'migbridge-unix-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

test('a bound-but-not-listening socket (ECONNREFUSED) is retried until the peer listens', async (t) => {
  const path = join(tempDir(t), 's.sock');
  staleSocket(path);
  await t.throwsAsync(connectUnixWhenListening(path, { waitMs: 0 }), { code: 'ECONNREFUSED' });
  const server = net.createServer((c) => c.end('hello'));
  t.teardown(() => server.close());
  setTimeout(() => {
    unlinkSync(path);
    server.listen(path);
  }, 150);
  const socket = await connectUnixWhenListening(path, { waitMs: 5000 });
  const got = await new Promise<string>((resolve) => {
    let text = '';
    socket.setEncoding('utf8').on('data', (d: string) => (text += d)).on('end', () => resolve(text));
  });
  t.is(got, 'hello');
});

test('a missing socket (ENOENT) is retried; giving up reports the last errno', async (t) => {
  const path = join(tempDir(t), 'late.sock');
  const started = performance.now();
  await t.throwsAsync(connectUnixWhenListening(path, { waitMs: 200 }), { code: 'ENOENT' });
  t.true(performance.now() - started >= 100, 'it kept trying for (most of) the wait');
});

test('other errors are final at once', async (t) => {
  const dir = tempDir(t);
  // A path through a plain file can never become a socket: ENOTDIR must not be waited out.
  const file = join(dir, 'plain');
  writeFileSync(file, '');
  const started = performance.now();
  await t.throwsAsync(connectUnixWhenListening(join(file, 'x.sock'), { waitMs: 5000 }), { code: 'ENOTDIR' });
  t.true(performance.now() - started < 1000, 'no retry on ENOTDIR');
});
