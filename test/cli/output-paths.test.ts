// Output path problems, for every command that writes a file (save -o, rewrite, inject,
// reframe, extract): exit 1, a message naming the user's path and the reason, the errno name
// as `code` and the path in JSON, no stack trace, and no temporary file left behind.
import test, { type ExecutionContext } from 'ava';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync, mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { CLI, describeRun, isRoot, missing, runCli, scratchDir, temporaries, tmpfsAt, TWO_MTTY } from '../helpers/output-safety.js';

/** Each command, writing its output to OUT (a file; a directory for extract). */
const COMMANDS: { name: string; args: (out: string, dir: string) => string[]; big?: boolean }[] = [
  { name: 'save -o', args: (out) => ['save', '--device', 'sim:size=4MiB', '-o', out] },
  { name: 'rewrite', args: (out) => ['rewrite', TWO_MTTY, out] },
  { name: 'inject', args: (out, dir) => ['inject', TWO_MTTY, '--device-data', `0000:00:04.0/vfio=${deviceData(dir)}`, '-o', out] },
  { name: 'reframe', args: (out) => ['reframe', TWO_MTTY, out] },
  { name: 'extract --out', args: (out) => ['extract', TWO_MTTY, '--out', out] },
  { name: 'extract --ram', args: (out) => ['extract', TWO_MTTY, '--ram', out] },
];

function deviceData(dir: string): string {
  const f = join(dir, 'dev.data');
  writeFileSync(f, Buffer.alloc(60, 7));
  return f;
}

interface JsonError { error: { name: string; code: string; message: string; path: string } }

/** Runs the command in both output modes and checks the failure; returns the JSON error. */
async function expectPathError(t: ExecutionContext, cmd: typeof COMMANDS[number], out: string, dir: string, code: string, reason: RegExp): Promise<void> {
  const human = await runCli(t, cmd.args(out, dir));
  t.is(human.code, 1, `${cmd.name}: ${describeRun(human)}`);
  t.true(human.stderr.includes(out), `${cmd.name}: the message names ${out}: ${human.stderr}`);
  t.regex(human.stderr, reason, `${cmd.name}: the reason`);
  t.notRegex(human.stderr, /\n\s+at |partial-/, `${cmd.name}: no stack trace, no temporary name`);
  const json = await runCli(t, [...cmd.args(out, dir), '--output=json']);
  t.is(json.code, 1, `${cmd.name} json: ${describeRun(json)}`);
  const err = (JSON.parse(json.stderr.trim().split('\n').at(-1)!) as JsonError).error;
  t.is(err.code, code, `${cmd.name}: JSON code`);
  t.true(typeof err.name === 'string' && typeof err.message === 'string', `${cmd.name}: name and message`);
  t.true(err.path === out || err.path.startsWith(out + '/'), `${cmd.name}: JSON path ${err.path} is the user's ${out} (or a file extract writes in it)`);
}

function noTemporaries(t: ExecutionContext, dir: string, what: string): void {
  t.deepEqual(temporaries(dir), [], `${what}: no temporary file left in ${dir}`);
}

test('a missing directory: exit 1 naming the path, ENOENT, nothing created', async (t) => {
  const dir = scratchDir(t);
  for (const cmd of COMMANDS) {
    const out = join(dir, 'nodir', cmd.name.startsWith('extract') ? 'sub' : 'out.mig');
    await expectPathError(t, cmd, out, dir, 'ENOENT', /does not exist/);
    t.deepEqual(readdirSync(dir).filter((f) => f !== 'dev.data'), [], `${cmd.name}: nothing created`);
  }
});

test('the parent is not a directory: ENOTDIR', async (t) => {
  const dir = scratchDir(t);
  writeFileSync(join(dir, 'plain'), 'x');
  for (const cmd of COMMANDS) {
    await expectPathError(t, cmd, join(dir, 'plain', 'out'), dir, 'ENOTDIR', /not a directory/);
    noTemporaries(t, dir, cmd.name);
  }
});

test('the output is a directory (a file for extract): EISDIR / ENOTDIR, the directory untouched', async (t) => {
  const dir = scratchDir(t);
  const taken = join(dir, 'taken');
  mkdirSync(taken);
  writeFileSync(join(dir, 'afile'), 'keep');
  for (const cmd of COMMANDS) {
    if (cmd.name.startsWith('extract')) {
      await expectPathError(t, cmd, join(dir, 'afile'), dir, 'ENOTDIR', /not a directory/);
      t.is(readFileSync(join(dir, 'afile'), 'utf8'), 'keep');
    } else {
      await expectPathError(t, cmd, taken, dir, 'EISDIR', /is a directory/);
    }
    t.deepEqual(readdirSync(taken), [], `${cmd.name}: nothing written into the directory`);
    noTemporaries(t, dir, cmd.name);
  }
});

test('a read-only file system: EROFS', async (t) => {
  const dir = scratchDir(t);
  if (missing(t, isRoot() ? null : 'root (to mount a read-only tmpfs)')) return;
  const ro = tmpfsAt(t, dir, 'ro', 'ro,size=1m');
  if (missing(t, ro ? null : 'mount -t tmpfs -o ro')) return;
  for (const cmd of COMMANDS) {
    await expectPathError(t, cmd, join(ro!, 'out'), dir, 'EROFS', /read-only/);
  }
});

test('a read-only directory as an unprivileged user: EACCES', (t) => {
  const dir = scratchDir(t, 0o755);
  const ro = join(dir, 'ro');
  mkdirSync(ro, { mode: 0o555 });
  // Root ignores directory permissions: as root, the CLI runs as nobody for this case.
  for (const cmd of COMMANDS) {
    const out = join(ro, 'out');
    const argv = [...cmd.args(out, dir), '--output=json'];
    // Input files must be readable by nobody: the fixture is, dev.data is written 0644.
    const r = isRoot()
      ? spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, CLI, ...argv], { encoding: 'utf8' })
      : spawnSync(process.execPath, [CLI, ...argv], { encoding: 'utf8' });
    t.is(r.status, 1, `${cmd.name}: ${r.stderr}`);
    const err = (JSON.parse(r.stderr.trim().split('\n').at(-1)!) as JsonError).error;
    t.is(err.code, 'EACCES', `${cmd.name}: ${r.stderr}`);
    t.regex(err.message, /permission denied/, cmd.name);
    t.true(err.message.includes(out), cmd.name);
    t.deepEqual(readdirSync(ro), [], `${cmd.name}: nothing in the directory`);
  }
});

test('a full disk (1 MiB tmpfs): ENOSPC, no temporary file, nothing under the final name', async (t) => {
  const dir = scratchDir(t);
  if (missing(t, isRoot() ? null : 'root (to mount a 1 MiB tmpfs)')) return;
  const small = tmpfsAt(t, dir, 'small', 'size=1m');
  if (missing(t, small ? null : 'mount -t tmpfs -o size=1m')) return;
  // Fill it so even the smallest output (extract's 60-byte device files) finds no room.
  try {
    writeFileSync(join(small!, 'filler'), Buffer.alloc(2 << 20));
  } catch {
    // ENOSPC once the 1 MiB are taken: what is wanted.
  }
  for (const cmd of COMMANDS) {
    const out = join(small!, cmd.name.startsWith('extract') ? 'xdir' : 'out.mig');
    await expectPathError(t, cmd, out, dir, 'ENOSPC', /no space left/);
    t.deepEqual(readdirSync(small!).filter((f) => f !== 'filler' && f !== 'xdir'), [], `${cmd.name}: nothing left on the full disk`);
    if (cmd.name.startsWith('extract') && existsSync(out)) t.deepEqual(readdirSync(out), [], `${cmd.name}: the output directory holds nothing`);
  }
});

test('output is the input: rewrite/inject/reframe read it to the end before the rename, so the result is complete and correct', async (t) => {
  const dir = scratchDir(t);
  const original = readFileSync(TWO_MTTY);
  for (const name of ['rewrite', 'reframe']) {
    const f = join(dir, `${name}.mig`);
    writeFileSync(f, original);
    const r = await runCli(t, [name, f, f]);
    t.is(r.code, 0, `${name}: ${describeRun(r)}`);
    t.true(readFileSync(f).equals(original), `${name} in place: byte-identical result`);
  }
  const f = join(dir, 'inject.mig');
  writeFileSync(f, original);
  const r = await runCli(t, ['inject', f, '--device-data', `0000:00:04.0/vfio=${deviceData(dir)}`, '-o', f]);
  t.is(r.code, 0, describeRun(r));
  const back = await runCli(t, ['extract', f, '--out', join(dir, 'x')]);
  t.is(back.code, 0, describeRun(back));
  t.true(readFileSync(join(dir, 'x', '0000:00:04.0%2Fvfio.data')).equals(Buffer.alloc(60, 7)), 'inject in place: the new data is in the file');
  noTemporaries(t, dir, 'in place');
});

test('extract creates a missing output directory (one level) and removes it again when the extraction fails', async (t) => {
  const dir = scratchDir(t);
  const cut = join(dir, 'cut.mig');
  writeFileSync(cut, readFileSync(TWO_MTTY).subarray(0, 100_000));
  for (const opt of ['--ram', '--out']) {
    const r = await runCli(t, ['extract', cut, opt, join(dir, 'new')]);
    t.is(r.code, 1, describeRun(r));
    t.regex(r.stderr, /truncated/);
    t.false(existsSync(join(dir, 'new')), `${opt}: the directory extract created is gone`);
  }
});
