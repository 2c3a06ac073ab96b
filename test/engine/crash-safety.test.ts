// kill -9 in the middle of every command that writes a file: the final name holds the
// previous file (or nothing), never a partial one; at most a `.NAME.partial-XXXX` remains.
// A proxy killed mid-migration leaves its tee only under the temporary name, and inspect
// calls that capture truncated. Serial: a test blocking the event loop (large file copies)
// would let another test's command finish before its kill point is seen.
import test, { type ExecutionContext } from 'ava';
import { copyFileSync, existsSync, readFileSync, readdirSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { proxyListening, waitFor } from '../helpers/cli-run.js';
import { describeRun, runCli, scratchDir, startCli, temporaries, TWO_MTTY } from '../helpers/output-safety.js';

const PREVIOUS = Buffer.from('the previous, complete file\n');

/** Bytes in the temporary outputs of `dir` so far. */
function partialBytes(dir: string): number {
  return temporaries(dir).reduce((n, f) => n + statSync(join(dir, f)).size, 0);
}

/** Leftovers of an earlier kill (what a user would clean up), so the next kill watches only its own. */
function removeTemporaries(dir: string): void {
  for (const f of temporaries(dir)) rmSync(join(dir, f));
}

/** Starts `args`, waits until its temporary output in `dir` holds more than `bytes`, then kill -9. */
async function killAfter(t: ExecutionContext, args: string[], dir: string, bytes: number, cwd?: string): Promise<void> {
  const run = startCli(t, args, cwd ? { cwd } : {});
  let exited = false;
  void run.done.then(() => { exited = true; });
  await waitFor(`more than ${bytes} bytes in a temporary output of ${dir}`, () => exited || partialBytes(dir) > bytes, 60_000);
  t.false(exited, `${args[0]} was still running when killed at ${bytes} bytes (stderr: ${run.stderr()})`);
  run.kill('SIGKILL');
  const r = await run.done;
  t.is(r.signal, 'SIGKILL');
}

/** A large save stream to feed rewrite/reframe/inject/extract: 2 sim devices of 96 MiB. */
async function bigStream(t: ExecutionContext, dir: string): Promise<string> {
  const f = join(dir, 'big.mig');
  const r = await runCli(t, ['save', '--device', 'sim:size=96MiB', '--device', 'sim:size=96MiB', '-o', f]);
  t.is(r.code, 0, describeRun(r));
  return f;
}

test.serial('save -o killed at its first bytes and half-way: the previous file is intact', async (t) => {
  const dir = scratchDir(t);
  const out = join(dir, 'state.mig');
  for (const at of [0, 32 << 20]) {
    writeFileSync(out, PREVIOUS);
    await killAfter(t, ['save', '--device', 'sim:size=64MiB,rate=16MiB/s', '-o', out], dir, at);
    t.true(readFileSync(out).equals(PREVIOUS), `killed after ${at} bytes: the previous file is intact`);
  }
});

test.serial('the next save to the same name removes the partial file a kill -9 left, and says so', async (t) => {
  const dir = scratchDir(t);
  const out = join(dir, 'state.mig');
  await killAfter(t, ['save', '--device', 'sim:size=64MiB,rate=16MiB/s', '-o', out], dir, 1 << 20);
  const [left] = temporaries(dir);
  t.truthy(left, 'the killed save left its temporary file');
  const r = await runCli(t, ['save', '--device', 'sim:size=1MiB', '-o', out]);
  t.is(r.code, 0, describeRun(r));
  t.regex(r.stderr, new RegExp(`removed ${join(dir, left!).replace(/[.]/g, '\\.')} \\(\\d+ bytes\\), the unfinished output of an interrupted run`));
  t.deepEqual(readdirSync(dir), ['state.mig']);
});

test.serial('rewrite, reframe and inject killed mid-write: the previous file is intact', async (t) => {
  const dir = scratchDir(t);
  const big = await bigStream(t, dir);
  const data = join(dir, 'dev.data');
  writeFileSync(data, Buffer.alloc(1 << 20, 3));
  const out = join(dir, 'out.mig');
  const commands: [string, string[]][] = [
    ['rewrite', ['rewrite', big, out]],
    ['reframe', ['reframe', big, out]],
    ['inject', ['inject', big, '--device-data', `0000:00:04.0/vfio=${data}`, '-o', out]],
  ];
  for (const [name, args] of commands) {
    for (const at of [0, 16 << 20]) {
      writeFileSync(out, PREVIOUS);
      removeTemporaries(dir);
      await killAfter(t, args, dir, at);
      t.true(readFileSync(out).equals(PREVIOUS), `${name} killed after ${at} bytes: the previous file is intact`);
    }
  }
});

test.serial('extract killed mid-write: the earlier extraction (manifest and files) is intact', async (t) => {
  const dir = scratchDir(t);
  const big = await bigStream(t, dir);
  const small = join(dir, 'small.mig');
  t.is((await runCli(t, ['save', '--device', 'sim:size=1MiB', '--device', 'sim:size=1MiB', '-o', small])).code, 0);
  removeTemporaries(dir);
  const out = join(dir, 'x');
  const first = await runCli(t, ['extract', small, '--out', out]);
  t.is(first.code, 0, describeRun(first));
  const before = new Map(readdirSync(out).map((f) => [f, readFileSync(join(out, f))]));
  for (const at of [0, 16 << 20]) {
    removeTemporaries(out);
    await killAfter(t, ['extract', big, '--out', out], out, at);
    const after = new Map(readdirSync(out).filter((f) => !f.includes('.partial-')).map((f) => [f, readFileSync(join(out, f))]));
    t.deepEqual([...after.keys()].sort(), [...before.keys()].sort(), `killed after ${at} bytes: the same final names`);
    for (const [f, b] of before) t.true(after.get(f)!.equals(b), `${f} unchanged`);
  }
  // A failing re-extract (a truncated stream) keeps the earlier set as it was, and cleans up.
  removeTemporaries(out);
  const cut = join(dir, 'cut.mig');
  copyFileSync(big, cut);
  truncateSync(cut, 50 << 20);
  const bad = await runCli(t, ['extract', cut, '--out', out]);
  t.is(bad.code, 1, describeRun(bad));
  for (const [f, b] of before) t.true(readFileSync(join(out, f)).equals(b), `${f} unchanged after a failed re-extract`);
  const manifest = JSON.parse(readFileSync(join(out, 'manifest.json'), 'utf8')) as { devices: { dataFile: string }[] };
  // The manifest names its files relative to itself.
  for (const d of manifest.devices) t.true(existsSync(join(out, d.dataFile)), `the manifest's ${d.dataFile} exists`);
});

test.serial('a proxy killed mid-migration: no tee under the final name, the partial one is named so, and inspect says truncated', async (t) => {
  const dir = scratchDir(t);
  const dst = startCli(t, ['restore', '--from', 'unix:out.sock', '--device', 'sim:size=64MiB'], { cwd: dir });
  await waitFor('the destination socket', () => existsSync(join(dir, 'out.sock')), 30_000);
  const proxy = startCli(t, ['proxy', '--listen', 'unix:in.sock', '--to', 'unix:out.sock', '--tee', 'tee.mig', '--progress', '--output=json'], { cwd: dir });
  await proxyListening(proxy, 30_000);
  const src = startCli(t, ['save', '--device', 'sim:size=64MiB,rate=16MiB/s', '--to', 'unix:in.sock'], { cwd: dir });
  await waitFor('tee bytes', () => partialBytes(dir) > 4 << 20, 60_000);
  proxy.kill('SIGKILL');
  t.is((await proxy.done).signal, 'SIGKILL');
  t.not((await src.done).code, 0, 'the source saw its migration fail');
  t.not((await dst.done).code, 0, 'the destination saw its migration fail');
  t.false(existsSync(join(dir, 'tee.mig')), 'nothing under the tee name');
  const partial = temporaries(dir);
  t.is(partial.length, 1);
  t.regex(partial[0]!, /^\.tee\.mig\.partial-[0-9a-f]{16}$/);
  const ins = await runCli(t, ['inspect', join(dir, partial[0]!)]);
  t.is(ins.code, 1, describeRun(ins));
  t.regex(ins.stderr, /truncated/);
});

test.serial('a QEMU capture cut short (FULL sections, no vmdesc trailer): inspect names the truncation', async (t) => {
  const dir = scratchDir(t);
  const cut = join(dir, 'cut.mig');
  copyFileSync(TWO_MTTY, cut);
  truncateSync(cut, statSync(TWO_MTTY).size - 20_000);
  const ins = await runCli(t, ['inspect', cut, '--output=json']);
  t.is(ins.code, 1, describeRun(ins));
  const err = (JSON.parse(ins.stderr.trim()) as { error: { code: string; message: string; offset: number } }).error;
  t.is(err.code, 'ESTREAM_TRUNCATED');
  t.regex(err.message, /ends without the vmdesc trailer QEMU writes last, so it looks truncated/);
  t.is(typeof err.offset, 'number');
});
