// SIGINT/SIGTERM during save and restore, through the real CLI on simulated devices, sent
// at points the CLI itself announces (--progress notes), never after a sleep. Each test
// checks the devices afterwards through their state files (sim state-file=: the state a
// GET would give when the process let go of them), that nothing partial is left beside
// the output, and the printed error with the recovery it did.
import test from 'ava';
import { mkdtempSync, readFileSync, readdirSync, rmSync, existsSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { type CliResult, noteSeen, runningCli, waitFor } from '../helpers/cli-run.js';

const root = mkdtempSync(path.join(tmpdir(), 'migbridge-signals-'));
test.after.always(() => rmSync(root, { recursive: true, force: true }));
let serial = 0;
const newDir = () => mkdtempSync(path.join(root, `t${serial++}-`));

interface StateFile { id: string; state: string; loads: number; closed?: boolean; releasedAtExit?: boolean; releasedFrom?: string }
const stateOf = (dir: string, id: string): StateFile => JSON.parse(readFileSync(path.join(dir, `${id}.state`), 'utf8')) as StateFile;
const sim = (dir: string, id: string, spec: string) => `sim:id=${id},${spec},state-file=${path.join(dir, `${id}.state`)}`;

interface Recovery { device: string; from: string; action: string; ok: boolean }
function errorOf(r: CliResult): { code: string; message: string; recovery?: Recovery[] } {
  const line = r.stderr.trim().split('\n').pop()!;
  return (JSON.parse(line) as { error: { code: string; message: string; recovery?: Recovery[] } }).error;
}

/** Every device closed by the CLI in RUNNING (not left for the kernel's release at exit). */
function assertRunning(t: import('ava').ExecutionContext, dir: string, ids: string[]): void {
  for (const id of ids) {
    const s = stateOf(dir, id);
    t.is(s.state, 'RUNNING', `${id}: ${JSON.stringify(s)}`);
    t.true(s.closed, `${id} was closed by migbridge after its recovery`);
    t.falsy(s.releasedAtExit);
  }
}

/** Only the state files remain: no output, no temporary file. */
function assertOnlyStateFiles(t: import('ava').ExecutionContext, dir: string): void {
  t.deepEqual(readdirSync(dir).filter((f) => !f.endsWith('.state')), []);
}

/** `save --progress` of two sim devices, a and b, into DIR/out.mig (JSON output unless `extra` says otherwise). */
function saveTwo(t: import('ava').ExecutionContext, dir: string, a: string, b: string, extra: string[] = ['--output=json']) {
  const args = ['save', '--device', sim(dir, 'a', a), '--device', sim(dir, 'b', b), '-o', path.join(dir, 'out.mig'), '--progress', ...extra];
  return runningCli(args, 120_000, t.teardown.bind(t));
}

test('save: SIGINT during stop-copy -> sources back to RUNNING, temporary file removed, error with recovery, exit 1', async (t) => {
  const dir = newDir();
  // b stalls after 2 MiB of its stop-copy data: the save cannot end before the signal.
  const cli = saveTwo(t, dir, 'size=4MiB,seed=1', 'size=8MiB,seed=2,fail=stall@2MiB');
  await noteSeen(cli, 'stopped');
  t.true(readdirSync(dir).some((f) => f.includes('out.mig')), 'the temporary output exists while saving');
  cli.signal('SIGINT');
  const r = await cli.done;
  t.is(r.code, 1, r.stderr);
  const err = errorOf(r);
  t.is(err.code, 'ECANCELLED');
  t.regex(err.message, /save cancelled \(SIGINT\)/);
  t.deepEqual(err.recovery?.map((s) => [s.device, s.from, s.action, s.ok]), [['a', 'STOP_COPY', 'set-running', true], ['b', 'STOP_COPY', 'set-running', true]]);
  assertRunning(t, dir, ['a', 'b']);
  assertOnlyStateFiles(t, dir);
  t.is(r.stdout, '');
  t.notRegex(r.stderr, /\n\s+at /, 'no stack trace');
});

test('save --precopy: SIGTERM during PRE_COPY -> sources back to RUNNING, recovery printed (human mode), exit 1', async (t) => {
  const dir = newDir();
  // a's initial precopy data stalls after 1 MiB: the first precopy round cannot end.
  const cli = saveTwo(t, dir, 'size=4MiB,seed=1,precopy=3MiB,fail=stall@1MiB', 'size=4MiB,seed=2,precopy=1MiB', ['--precopy']);
  await waitFor('the precopy note', () => /save: 2 device\(s\) in PRE_COPY/.test(cli.stderr()), 60_000);
  cli.signal('SIGTERM');
  const r = await cli.done;
  t.is(r.code, 1, r.stderr);
  t.regex(r.stderr, /migbridge: save cancelled \(SIGTERM\)\n {2}a: was PRE_COPY, set RUNNING\n {2}b: was PRE_COPY, set RUNNING\n/);
  assertRunning(t, dir, ['a', 'b']);
  assertOnlyStateFiles(t, dir);
});

/** A sender that connects to `sock`, writes `bytes` and then neither writes nor closes. */
function stalledSender(sock: string, bytes: Buffer): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(sock, () => s.write(bytes, () => resolve(s)));
    s.on('error', reject);
  });
}

test('restore: SIGTERM while the stream is arriving -> every destination reset, nothing loaded, exit 1', async (t) => {
  const dir = newDir();
  const stream = path.join(dir, 'full.mig');
  const saved = runningCli(['save', '--device', 'sim:seed=3,size=4MiB', '--device', 'sim:seed=4,size=4MiB', '-o', stream], 120_000, t.teardown.bind(t));
  t.is((await saved.done).code, 0);
  const sock = path.join(dir, 'in.sock');
  const cli = runningCli(['restore', '--from', `unix:${sock}`, '--device', sim(dir, 'x', 'size=4MiB'), '--device', sim(dir, 'y', 'size=4MiB'), '--progress', '--output=json'], 120_000, t.teardown.bind(t));
  await waitFor('the restore socket', () => existsSync(sock), 60_000);
  // Half the stream: both devices get data, neither gets all of it.
  const sender = await stalledSender(sock, readFileSync(stream).subarray(0, 6 << 20));
  t.teardown(() => sender.destroy());
  await noteSeen(cli, 'device-data');
  cli.signal('SIGTERM');
  const r = await cli.done;
  t.is(r.code, 1, r.stderr);
  const err = errorOf(r);
  t.is(err.code, 'ECANCELLED');
  t.deepEqual(err.recovery?.map((s) => [s.device, s.from, s.action, s.ok]), [['x', 'RESUMING', 'reset', true], ['y', 'RESUMING', 'reset', true]]);
  assertRunning(t, dir, ['x', 'y']);
  for (const id of ['x', 'y']) t.is(stateOf(dir, id).loads, 0, `${id} loaded nothing`);
  t.false(existsSync(sock), 'the socket file is removed');
});

test('restore: SIGINT while waiting for the sender -> no device touched, socket removed, exit 1', async (t) => {
  const dir = newDir();
  const sock = path.join(dir, 'in.sock');
  const cli = runningCli(['restore', '--from', `unix:${sock}`, '--device', sim(dir, 'x', 'size=1MiB'), '--output=json'], 120_000, t.teardown.bind(t));
  await waitFor('the restore socket', () => existsSync(sock), 60_000);
  cli.signal('SIGINT');
  const r = await cli.done;
  t.is(r.code, 1, r.stderr);
  const err = errorOf(r);
  t.is(err.code, 'ECANCELLED');
  t.regex(err.message, /waiting for a connection on unix:.* cancelled \(SIGINT\)/);
  t.false(existsSync(sock));
  const s = stateOf(dir, 'x');
  t.is(s.state, 'RUNNING');
  t.is(s.loads, 0);
});

test('save: a second signal exits at once (128+n) even while a transition holds the first one up; no device left saving, no temporary file', async (t) => {
  const dir = newDir();
  // Stopping b takes 10 minutes: the first signal's recovery waits behind that arc.
  const cli = saveTwo(t, dir, 'size=1MiB', 'size=1MiB,fail=slow-stop@600s');
  await noteSeen(cli, 'stopping');
  cli.signal('SIGINT');
  await noteSeen(cli, 'cancelling');
  t.true(readdirSync(dir).some((f) => f.startsWith('.out.mig.partial-')), 'the temporary output exists when the second signal comes');
  cli.signal('SIGINT');
  const r = await cli.done;
  t.is(r.code, 130, r.stderr);
  t.notRegex(r.stderr, /\n\s+at /, 'no stack trace');
  assertOnlyStateFiles(t, dir);
  // The process let go of its devices: the kernel ends their sessions (RUNNING) on release.
  for (const id of ['a', 'b']) {
    const s = stateOf(dir, id);
    t.is(s.state, 'RUNNING', `${id}: ${JSON.stringify(s)}`);
  }
});
