// The fsm commands through the real CLI binary: JSON shape, exit codes.
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const bin = fileURLToPath(new URL('../../../bin/migbridge.js', import.meta.url));
const run = (...args: string[]) => spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8' });

test('fsm table --output=json gives every (from, to) pair with kernel paths and errnos', (t) => {
  const r = run('fsm', 'table', '--flags', 'stop-copy,pre-copy', '--output=json');
  t.is(r.status, 0, r.stderr);
  const table = JSON.parse(r.stdout);
  const names = ['ERROR', 'STOP', 'RUNNING', 'STOP_COPY', 'RESUMING', 'RUNNING_P2P', 'PRE_COPY', 'PRE_COPY_P2P'];
  t.deepEqual(Object.keys(table).sort(), [...names].sort());
  for (const from of names) t.deepEqual(Object.keys(table[from]).sort(), [...names].sort());
  t.deepEqual(table.RUNNING.STOP_COPY, { path: ['RUNNING', 'STOP', 'STOP_COPY'], dataFd: true, endsSession: false });
  t.deepEqual(table.RUNNING.PRE_COPY, { path: ['RUNNING', 'PRE_COPY'], dataFd: true, endsSession: false });
  t.is(table.RUNNING.RUNNING_P2P.errno, 22);
  t.is(table.STOP_COPY.PRE_COPY.errno, 22);
  t.deepEqual(table.PRE_COPY.STOP_COPY, { path: ['PRE_COPY', 'STOP_COPY'], dataFd: false, endsSession: false });
});

test('fsm path accepts flag names or a number and prints the path', (t) => {
  const a = run('fsm', 'path', '--flags', 'stop-copy,p2p,pre-copy', '--from', 'running', '--to', 'stop-copy', '--output=json');
  const b = run('fsm', 'path', '--flags', '7', '--from', 'RUNNING', '--to', 'STOP_COPY', '--output=json');
  t.is(a.status, 0);
  t.deepEqual(JSON.parse(a.stdout).path, ['RUNNING', 'RUNNING_P2P', 'STOP', 'STOP_COPY']);
  t.is(a.stdout, b.stdout);
  const human = run('fsm', 'path', '--flags', '7', '--from', 'resuming', '--to', 'running');
  t.is(human.stdout.trim(), 'RESUMING -> STOP -> RUNNING_P2P -> RUNNING   (ends the open data session)');
});

test('exit status: 1 for an EINVAL request, 2 for usage errors', (t) => {
  const bad = run('fsm', 'path', '--flags', '7', '--from', 'stop-copy', '--to', 'pre-copy', '--output=json');
  t.is(bad.status, 1);
  t.is(JSON.parse(bad.stdout).errno, 22);
  t.is(run('fsm', 'path', '--flags', 'bogus', '--from', 'stop', '--to', 'running').status, 2);
  t.is(run('fsm', 'path', '--flags', '7', '--from', 'stop').status, 2);
  t.is(run('no-such-command').status, 2);
  const usage = run('fsm', 'table', '--output=json', '--flags', '7', '--nope');
  t.is(usage.status, 2);
  t.truthy(JSON.parse(usage.stderr).error.message);
});
