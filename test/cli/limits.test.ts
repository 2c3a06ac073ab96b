// Limits (issue 10 item 7), through the real CLI on simulated devices: a low open-file
// limit with many devices, an output disk that fills, a destination socket that stops
// reading. Each must end in a clean typed error (exit 1, no stack trace), every source
// back in RUNNING (sim state files), and nothing partial left under any name.
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { runningCli } from '../helpers/cli-run.js';

const bin = fileURLToPath(new URL('../../../bin/migbridge.js', import.meta.url));
const root = mkdtempSync(path.join(tmpdir(), 'migbridge-limits-'));
test.after.always(() => rmSync(root, { recursive: true, force: true }));
let serial = 0;
const newDir = () => mkdtempSync(path.join(root, `t${serial++}-`));

const sim = (dir: string, id: string, spec: string) => `sim:id=${id},${spec},state-file=${path.join(dir, `${id}.state`)}`;
const stateOf = (dir: string, id: string) => JSON.parse(readFileSync(path.join(dir, `${id}.state`), 'utf8')) as { state: string; closed?: boolean; loads: number };
const deviceArgs = (dir: string, ids: string[], spec: string) => ids.flatMap((id) => ['--device', sim(dir, id, spec)]);

interface CliError { code: string; message: string; errno?: number; offset?: number; recovery?: { device: string; ok: boolean }[] }
function errorOf(stderr: string): CliError {
  return (JSON.parse(stderr.trim().split('\n').pop()!) as { error: CliError }).error;
}

function assertSourcesRunning(t: import('ava').ExecutionContext, dir: string, ids: string[]): void {
  for (const id of ids) {
    const s = stateOf(dir, id);
    t.is(s.state, 'RUNNING', `${id}: ${JSON.stringify(s)}`);
    t.true(s.closed, id);
  }
}

/** Runs the CLI under `ulimit -n limit`. */
function runLimited(limit: number, args: string[]) {
  const quoted = args.map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
  return spawnSync('bash', ['-c', `ulimit -n ${limit} && exec "${process.execPath}" "${bin}" ${quoted}`], { encoding: 'utf8', timeout: 120_000 });
}

test('ulimit -n 64 with 32 devices: save and restore fail with EMFILE, every device back in RUNNING, no output left', (t) => {
  const dir = newDir();
  const ids = Array.from({ length: 32 }, (_, i) => `s${i}`);
  const out = path.join(dir, 'out.mig');
  const s = runLimited(64, ['save', ...deviceArgs(dir, ids, 'size=256KiB'), '-o', out, '--output=json']);
  t.is(s.status, 1, s.stderr);
  const err = errorOf(s.stderr);
  t.is(err.code, 'EMFILE', err.message);
  t.notRegex(s.stderr, /\n\s+at /, 'no stack trace');
  t.true(err.recovery!.length > 0 && err.recovery!.every((r) => r.ok), JSON.stringify(err.recovery));
  assertSourcesRunning(t, dir, ids);
  t.deepEqual(readdirSync(dir).filter((f) => !f.endsWith('.state')), [], 'no output, no temporary file');

  // The same 32 devices' stream, saved without the limit, restored under it.
  const full = path.join(dir, 'full.mig');
  const ok = spawnSync(process.execPath, [bin, 'save', ...ids.flatMap((_, i) => ['--device', `sim:seed=${i + 1},size=256KiB`]), '-o', full], { encoding: 'utf8', timeout: 120_000 });
  t.is(ok.status, 0, ok.stderr);
  const dst = ids.map((id) => `d${id}`);
  const r = runLimited(64, ['restore', '-i', full, ...deviceArgs(dir, dst, 'size=256KiB'), '--output=json']);
  t.is(r.status, 1, r.stderr);
  t.notRegex(r.stderr, /\n\s+at /, 'no stack trace');
  t.regex(r.stderr, /EMFILE/);
  for (const id of dst) {
    t.is(stateOf(dir, id).state, 'RUNNING', id);
    t.is(stateOf(dir, id).loads, 0, `${id} loaded nothing`);
  }
});

test('an output disk that fills (2 MiB tmpfs): ENOSPC naming the output and offset, sources RUNNING, nothing left on the disk', (t) => {
  const dir = newDir();
  const disk = path.join(dir, 'disk');
  mkdirSync(disk);
  const mount = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', disk], { encoding: 'utf8' });
  // Needs root (as the project's tests run): a skipped mount must fail the test, not pass it.
  t.is(mount.status, 0, `mount tmpfs: ${mount.stderr}`);
  t.teardown(() => {
    spawnSync('umount', [disk]);
  });
  const out = path.join(disk, 'out.mig');
  const s = spawnSync(process.execPath, [bin, 'save', ...deviceArgs(dir, ['a', 'b'], 'size=2MiB'), '-o', out, '--output=json'], { encoding: 'utf8', timeout: 120_000 });
  t.is(s.status, 1, s.stderr);
  const err = errorOf(s.stderr);
  t.is(err.code, 'ENOSPC', err.message);
  t.is(err.errno, 28);
  t.regex(err.message, new RegExp(`cannot write ${out.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} at byte \\d+: no space left on the device \\(ENOSPC\\)`));
  t.true(typeof err.offset === 'number' && err.offset > 0 && err.offset < 2 << 20);
  assertSourcesRunning(t, dir, ['a', 'b']);
  t.deepEqual(readdirSync(disk), [], 'the temporary file is removed, no final name');
});

test('a destination socket that stops reading: --write-timeout fails the save (ETIMEDOUT), sources RUNNING', async (t) => {
  const dir = newDir();
  const sock = path.join(dir, 'dst.sock');
  // Accepts the connection and never reads from it.
  const held: net.Socket[] = [];
  const server = net.createServer((c) => {
    c.pause();
    held.push(c);
  });
  await new Promise<void>((r) => server.listen(sock, r));
  t.teardown(() => {
    for (const c of held) c.destroy();
    server.close();
  });
  const cli = runningCli(['save', ...deviceArgs(dir, ['a', 'b'], 'size=16MiB'), '--to', `unix:${sock}`, '--write-timeout', '500', '--output=json'], 120_000, t.teardown.bind(t));
  const r = await cli.done;
  t.is(r.code, 1, r.stderr);
  const err = errorOf(r.stderr);
  t.is(err.code, 'ETIMEDOUT', err.message);
  t.regex(err.message, /writing the stream to unix:.* made no progress for 500 ms at byte \d+/);
  t.notRegex(r.stderr, /\n\s+at /);
  assertSourcesRunning(t, dir, ['a', 'b']);
  t.true(held.length === 1, 'the save did connect');
});
