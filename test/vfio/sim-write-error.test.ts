// fail=write-error@SIZE: the simulator reproducing mtty's resume hazard (docs/vfio-migration.md §8.5): a
// write on the resume fd fails, yet the device keeps what it took and the exit from
// RESUMING succeeds and loads it. Only VFIO_DEVICE_RESET keeps the damage out.
import test from 'ava';
import { MigbridgeError } from '../../src/errors.js';
import { MigState } from '../../src/fsm/index.js';
import { defaultEngine } from '../../src/native/index.js';
import { type DataFd, type MigrationDevice, VfioDeviceError } from '../../src/vfio/device.js';
import { createSimDevice, formatSimSpec, parseSimSpec } from '../../src/vfio/sim/index.js';

const io = defaultEngine();
const EPIPE = 32;
const CUT = 300_000; // inside block 4's payload (header 64 B, 64 KiB + 16 B per block)

async function readAll(fd: DataFd): Promise<Buffer> {
  const parts: Buffer[] = [];
  for (;;) {
    const b = await io.read(fd.fd, { timeoutMs: 20_000 });
    const n = b.data.length;
    if (n > 0) parts.push(Buffer.from(b.data));
    b.release();
    if (n === 0) return Buffer.concat(parts);
  }
}

async function save(dev: MigrationDevice): Promise<Buffer> {
  const fd = (await dev.setState(MigState.STOP_COPY))!;
  const data = await readAll(fd);
  await fd.verifyEnd();
  await dev.reset();
  await fd.close();
  return data;
}

/** Writes `data` in 1 KiB writes until one fails; returns the bytes accepted and the error. */
async function writeUntilError(fd: DataFd, data: Buffer): Promise<{ accepted: number; error?: MigbridgeError }> {
  let accepted = 0;
  while (accepted < data.length) {
    try {
      accepted += await io.write(fd.fd, data.subarray(accepted, accepted + 1024), { timeoutMs: 10_000 });
    } catch (e) {
      if (e instanceof MigbridgeError) return { accepted, error: e };
      throw e;
    }
  }
  return { accepted };
}

test('spec: fail=write-error@SIZE parses, formats and needs a value', (t) => {
  const c = parseSimSpec('sim:size=1MiB,fail=write-error@64KiB');
  t.deepEqual(c.faults, [{ kind: 'write-error', at: 64 * 1024 }]);
  t.deepEqual(parseSimSpec(formatSimSpec(c)).faults, c.faults);
  t.throws(() => parseSimSpec('sim:fail=write-error'), { message: /needs @VALUE/ });
});

test('write-error: writes fail with EPIPE after SIZE (at most one 4 KiB pipe page of slack); the exit from RESUMING succeeds and loads the damaged state', async (t) => {
  const src = createSimDevice('sim:size=2MiB,seed=3');
  const dst = createSimDevice(`sim:size=2MiB,seed=9,fail=write-error@${CUT}`);
  const fresh = createSimDevice('sim:size=2MiB,seed=11');
  try {
    const data = await save(src);
    const before = dst.stateDigest();
    const fd = (await dst.setState(MigState.RESUMING))!;
    const w = await writeUntilError(fd, data);
    t.is(w.error?.errno, EPIPE, 'the writer sees EPIPE (mtty: EFAULT)');
    t.true(w.accepted >= CUT && w.accepted <= CUT + 4096, `write() accepted ${w.accepted} bytes: SIZE plus at most one pipe page`);
    t.is(await dst.state(), MigState.RESUMING);
    t.is(dst.loads, 0);
    await fd.close();
    // The hazard: leaving RESUMING by a SET loads what the device took.
    t.is(await dst.setState(MigState.RUNNING), null);
    t.is(await dst.state(), MigState.RUNNING);
    t.is(dst.loads, 1);
    const r = dst.resumeResult!;
    t.false(r.verified);
    t.true(r.loaded);
    t.is(r.bytes, CUT, 'the device took exactly SIZE bytes');
    t.regex(r.reason!, /loaded a damaged state .*4 of 32 blocks whole, registers zeroed, no END record/);
    t.is(dst.seed, 3n, "the stream header's seed was adopted");
    t.not(dst.stateDigest(), before, "the device's own state is gone");
    t.not(dst.stateDigest(), src.stateDigest(), 'and it is not the source state');
    // Garbage: the damaged device's state cannot be restored anywhere.
    const damaged = await save(dst);
    const fd2 = (await fresh.setState(MigState.RESUMING))!;
    await io.write(fd2.fd, damaged, { timeoutMs: 10_000 }).catch(() => undefined);
    await fd2.close();
    const e = await t.throwsAsync(() => fresh.setState(MigState.RUNNING), { instanceOf: VfioDeviceError });
    t.regex(e!.message, /invalid generation/);
  } finally {
    for (const d of [src, dst, fresh]) await d.close();
  }
});

test('write-error: a reset after the failed write keeps the damage out (no load, own state intact)', async (t) => {
  const src = createSimDevice('sim:size=2MiB,seed=3');
  const dst = createSimDevice(`sim:size=2MiB,seed=9,fail=write-error@${CUT}`);
  try {
    const data = await save(src);
    const before = dst.stateDigest();
    const fd = (await dst.setState(MigState.RESUMING))!;
    const err = await t.throwsAsync(() => io.write(fd.fd, data, { timeoutMs: 10_000 }), { instanceOf: MigbridgeError });
    t.is(err!.errno, EPIPE);
    await fd.close();
    await dst.reset();
    t.is(await dst.state(), MigState.RUNNING);
    t.is(dst.loads, 0);
    t.is(dst.resumeResult, undefined);
    t.is(dst.stateDigest(), before);
    t.is(dst.seed, 9n);
  } finally {
    await src.close();
    await dst.close();
  }
});

test('write-error@0: no byte is taken; the exit loads a state with no header (every block lost)', async (t) => {
  const src = createSimDevice('sim:size=1MiB,seed=3');
  const dst = createSimDevice('sim:size=1MiB,seed=9,fail=write-error@0');
  try {
    const data = await save(src);
    const fd = (await dst.setState(MigState.RESUMING))!;
    const w = await writeUntilError(fd, data);
    t.is(w.error?.errno, EPIPE);
    t.true(w.accepted <= 4096);
    await fd.close();
    await dst.setState(MigState.RUNNING);
    t.is(dst.loads, 1);
    t.regex(dst.resumeResult!.reason!, /no header/);
    t.is(dst.seed, 9n, 'no header arrived: the seed stays');
  } finally {
    await src.close();
    await dst.close();
  }
});

test('write-error past the stream: the fault never trips, the restore verifies; a short stream still fails the exit with EINVAL', async (t) => {
  const src = createSimDevice('sim:size=1MiB,seed=3');
  const dst = createSimDevice('sim:size=1MiB,seed=9,fail=write-error@64MiB');
  try {
    const data = await save(src);
    let fd = (await dst.setState(MigState.RESUMING))!;
    await io.write(fd.fd, data.subarray(0, 5000), { timeoutMs: 10_000 });
    const e = await t.throwsAsync(() => dst.setState(MigState.RUNNING), { instanceOf: VfioDeviceError });
    t.is(e!.errno, 22);
    t.is(await dst.state(), MigState.RESUMING);
    t.is(dst.loads, 0);
    await fd.close();
    await dst.reset();
    fd = (await dst.setState(MigState.RESUMING))!;
    t.is(await io.write(fd.fd, data, { timeoutMs: 10_000 }), data.length);
    await fd.close();
    await dst.setState(MigState.RUNNING);
    t.is(dst.loads, 1);
    t.true(dst.resumeResult?.verified);
    t.is(dst.stateDigest(), src.stateDigest());
  } finally {
    await src.close();
    await dst.close();
  }
});
