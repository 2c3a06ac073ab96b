// The simulator under a low open-file limit behaves like a kernel device would: a data_fd
// that cannot be created fails the SET with EMFILE, and a worker thread that cannot start
// (EMFILE while loading) fails the session at once with EMFILE instead of leaving its
// reader waiting for the read timeout.
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const fixture = fileURLToPath(new URL('./fixtures/sim-worker-emfile.js', import.meta.url));

function runWithFree(free: number): Record<string, unknown> {
  const r = spawnSync('bash', ['-c', `ulimit -n 256 && exec "${process.execPath}" "${fixture}" ${free}`], { encoding: 'utf8', timeout: 120_000 });
  if (r.status !== 0) throw new Error(`fixture exited ${r.status}: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as Record<string, unknown>;
}

test('a sim worker that cannot start (EMFILE): the read ends and verifyEnd() says EMFILE; reset works', (t) => {
  // 3 free fds: the pipe and its private read end take them all, the worker gets none.
  const r = runWithFree(3);
  t.is(r.bytes, 0, 'the reader sees the end at once (the write end was closed for the dead worker)');
  t.is(r.code, 'EMFILE', String(r.message));
  t.regex(String(r.message), /device w: read failed: EMFILE/);
  t.is(r.reset, true, 'the session ends cleanly (no writer left on the pipe)');
});

test('with enough fds the same device saves its whole state (the fixture measures what it claims)', (t) => {
  const r = runWithFree(16);
  t.true((r.bytes as number) > 1 << 20, JSON.stringify(r));
  t.true(r.verified as boolean);
});
