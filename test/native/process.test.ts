// Engine behaviour seen from a whole process: the fallback chosen when
// io_uring_setup is denied, MIGBRIDGE_IO, exiting when idle, staying alive
// while ops are pending, and batched submission.
import test from 'ava';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { writeSync } from 'node:fs';
import { IoEngine, closeSync, pipe } from '../../src/native/index.js';
import { cachePath } from '../helpers/cache.js';

const here = dirname(fileURLToPath(import.meta.url)); // dist/test/native
const root = join(here, '..', '..', '..');
const cli = join(root, 'bin', 'migbridge.js');
const engineModule = join(root, 'dist', 'src', 'native', 'index.js');

function runNode(script: string, env: Record<string, string> = {}, wrapper: string[] = []): { status: number | null; stdout: string; stderr: string } {
  const cmd = [...wrapper, process.execPath, '--input-type=module', '-e', script];
  const r = spawnSync(cmd[0]!, cmd.slice(1), { env: { ...process.env, ...env }, encoding: 'utf8', timeout: 20_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function cliJson(env: Record<string, string>, wrapper: string[] = []): Record<string, unknown> {
  const cmd = [...wrapper, process.execPath, cli, 'env', '--output=json'];
  const out = execFileSync(cmd[0]!, cmd.slice(1), { env: { ...process.env, ...env }, encoding: 'utf8', timeout: 20_000 });
  return JSON.parse(out) as Record<string, unknown>;
}

test('io_uring_setup denied by seccomp (EPERM): the fallback is chosen, reported with the errno, and works', (t) => {
  const bin = cachePath('test', 'deny-io-uring');
  mkdirSync(dirname(bin), { recursive: true });
  const cc = spawnSync('cc', ['-O2', '-o', bin, join(root, 'test', 'native', 'deny-io-uring.c')], { encoding: 'utf8' });
  t.is(cc.status, 0, `compiling the seccomp helper failed (install a C compiler: apt-get install -y gcc): ${cc.error ?? cc.stderr}`);
  const env = cliJson({ MIGBRIDGE_IO: '' }, [bin]);
  t.is(env.io, 'threadpool');
  t.regex(String(env.reason), /io_uring_setup failed: Operation not permitted \(errno 1\)/);
  const script = `
    import { defaultEngine, pipe } from ${JSON.stringify(engineModule)};
    import { writeSync } from 'node:fs';
    const e = defaultEngine(); const [r, w] = pipe();
    writeSync(w, 'through the fallback');
    const b = await e.read(r); console.log(e.info().io + ':' + b.data.toString()); b.release();
    await e.shutdown();`;
  const r = runNode(script, { MIGBRIDGE_IO: '' }, [bin]);
  t.is(r.stdout.trim(), 'threadpool:through the fallback', r.stderr);
  // forcing io_uring where it is denied is a clear error, not a silent fallback
  const forced = runNode(`import { IoEngine } from ${JSON.stringify(engineModule)}; try { IoEngine.open({ force: 'io_uring' }) } catch (e) { console.log(e.code) }`, {}, [bin]);
  t.is(forced.stdout.trim(), 'ENOIOURING', forced.stderr);
});

test('MIGBRIDGE_IO selects the backend of defaultEngine and `migbridge env`', (t) => {
  t.like(cliJson({ MIGBRIDGE_IO: 'threadpool' }), { io: 'threadpool', forced: 'threadpool' });
  t.like(cliJson({ MIGBRIDGE_IO: 'io_uring' }), { io: 'io_uring', fixedBuffers: true });
  t.like(cliJson({ MIGBRIDGE_IO: '' }), { io: 'io_uring', bufferSize: 1 << 20 });
  const bad = spawnSync(process.execPath, [cli, 'env', '--output=json'], { env: { ...process.env, MIGBRIDGE_IO: 'epoll' }, encoding: 'utf8' });
  t.is(bad.status, 1);
  t.regex(bad.stderr, /"code":"EINVAL".*MIGBRIDGE_IO must be io_uring, threadpool or auto/);
});

for (const io of ['io_uring', 'threadpool']) {
  test(`[${io}] the process exits when the engine is idle, and stays alive while an op is pending`, (t) => {
    const idle = runNode(`
      import { defaultEngine, pipe } from ${JSON.stringify(engineModule)};
      import { writeSync } from 'node:fs';
      const e = defaultEngine(); const [r, w] = pipe(); writeSync(w, 'x');
      await e.ioctlBatch([{ fd: r, request: 0x541b, arg: Buffer.alloc(4) }]);
      (await e.read(r)).release(); console.log('done');`, { MIGBRIDGE_IO: io });
    t.is(idle.status, 0, idle.stderr);
    t.is(idle.stdout.trim(), 'done');
    // an unref'd timer cannot keep the process alive: only the pending read can
    const pending = runNode(`
      import { defaultEngine, pipe } from ${JSON.stringify(engineModule)};
      const e = defaultEngine(); const [r] = pipe();
      e.read(r).catch(() => {});
      setTimeout(() => { console.log('alive'); process.exit(3); }, 300).unref();`, { MIGBRIDGE_IO: io });
    t.is(pending.stdout.trim(), 'alive', pending.stderr);
    t.is(pending.status, 3);
  });
}

test('[io_uring] ops queued in one event-loop turn reach the kernel in one io_uring_enter', async (t) => {
  const e = IoEngine.open({ force: 'io_uring', bufferCount: 64 });
  const pipes = Array.from({ length: 64 }, () => pipe());
  for (const [, w] of pipes) writeSync(w, Buffer.from('abc'));
  const bufs = await Promise.all(pipes.map(([r]) => e.read(r)));
  t.deepEqual(bufs.map((b) => b.data.toString()), pipes.map(() => 'abc'));
  bufs.forEach((b) => b.release());
  const s = e.stats();
  t.is(s.sqes, 64);
  t.is(s.enters, 1);
  t.is(s.completions, 64);
  t.true(s.maxBatch > 1, `completions drained in batches (largest ${s.maxBatch})`);
  await e.shutdown();
  for (const [r, w] of pipes) {
    closeSync(r);
    closeSync(w);
  }
});
