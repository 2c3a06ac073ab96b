// Simulator-specific behaviour beyond the conformance suite: spec parsing, seeded content
// and verified restores, dirty precopy rounds, every injected fault, many instances.
import test from 'ava';
import { MigbridgeError, UsageError } from '../../src/errors.js';
import { MigState } from '../../src/fsm/index.js';
import { defaultEngine } from '../../src/native/index.js';
import { type DataFd, type MigrationDevice, VfioDeviceError, setStates } from '../../src/vfio/device.js';
import { type SimDevice, createSimDevice, fullStreamBytes, parseSimSpec } from '../../src/vfio/sim/index.js';

const io = defaultEngine();
const MiB = 1024 * 1024;

async function readAll(fd: DataFd, timeoutMs = 20_000): Promise<Buffer> {
  const parts: Buffer[] = [];
  for (;;) {
    const b = await io.read(fd.fd, { timeoutMs });
    if (b.data.length === 0) {
      b.release();
      return Buffer.concat(parts);
    }
    parts.push(Buffer.from(b.data));
    b.release();
  }
}

async function readExactly(fd: DataFd, n: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  let got = 0;
  while (got < n) {
    const b = await io.read(fd.fd, { length: Math.min(MiB, n - got), timeoutMs: 20_000 });
    if (b.data.length === 0) throw new Error(`EOF after ${got}/${n}`);
    parts.push(Buffer.from(b.data));
    got += b.data.length;
    b.release();
  }
  return Buffer.concat(parts);
}

async function save(dev: MigrationDevice): Promise<Buffer> {
  const fd = (await dev.setState(MigState.STOP_COPY))!;
  const data = await readAll(fd);
  await fd.verifyEnd();
  await dev.setState(MigState.STOP);
  await fd.close();
  return data;
}

async function restore(dev: MigrationDevice, data: Buffer): Promise<void> {
  const fd = (await dev.setState(MigState.RESUMING))!;
  await io.write(fd.fd, data);
  await fd.close();
  await dev.setState(MigState.RUNNING);
}

async function closeAll(...devs: MigrationDevice[]): Promise<void> {
  for (const d of devs) await d.close();
}

test('spec: every key parses, units and defaults', (t) => {
  const c = parseSimSpec('sim:id=gpu0,size=256MiB,seed=0x10,rate=2GiB/s,latency=200us,chunk=64KiB,precopy=16MiB,dirty=8MiB/s,flags=0x3,fail=eio@1MiB,fail=slow-stop@500ms');
  t.is(c.id, 'gpu0');
  t.is(c.size, 256 * MiB);
  t.is(c.seed, 16n);
  t.is(c.rate, 2 * 1024 * MiB);
  t.is(c.latencyMs, 0.2);
  t.is(c.chunk, 64 * 1024);
  t.is(c.precopy, 16 * MiB);
  t.is(c.dirtyRate, 8 * MiB);
  t.is(c.flags, 3);
  t.deepEqual(c.faults, [
    { kind: 'eio', at: MiB },
    { kind: 'slow-stop', ms: 500 },
  ]);
  t.deepEqual(parseSimSpec('sim:fail=error@stop-copy,fail=stall@4MiB,fail=bad-resume,flags=stop-copy+p2p').faults.length, 3);
  const d = parseSimSpec('sim:');
  t.is(d.size, 64 * MiB);
  t.is(d.flags, 7);
  t.is(d.rate, 0);
});

test('spec: bad keys and values are usage errors naming them', (t) => {
  t.throws(() => parseSimSpec('sim:sise=1'), { instanceOf: UsageError, message: /unknown key "sise"/ });
  t.throws(() => parseSimSpec('sim:size=lots'), { instanceOf: UsageError, message: /size=.*"lots"/ });
  t.throws(() => parseSimSpec('sim:fail=boom@1'), { instanceOf: UsageError, message: /unknown fault "boom"/ });
  t.throws(() => parseSimSpec('sim:fail=eio'), { instanceOf: UsageError, message: /needs @VALUE/ });
  t.throws(() => parseSimSpec('sim:fail=error@error'), { instanceOf: UsageError });
  t.throws(() => parseSimSpec('sim:latency=fast'), { instanceOf: UsageError, message: /latency/ });
  t.throws(() => parseSimSpec('sim:size=65GiB'), { instanceOf: UsageError, message: /64GiB/ });
  t.throws(() => parseSimSpec('sim:size'), { instanceOf: UsageError, message: /key=value/ });
});

test('content is deterministic from the seed; a restore verifies it and adopts it', async (t) => {
  const a = createSimDevice('sim:size=3MiB,seed=42');
  const b = createSimDevice('sim:size=3MiB,seed=42');
  const c = createSimDevice('sim:size=3MiB,seed=43');
  const dst = createSimDevice('sim:size=3MiB,seed=7');
  try {
    const sa = await save(a);
    t.is(sa.length, fullStreamBytes(3 * MiB));
    t.true(sa.equals(await save(b)), 'same seed, same stream');
    t.false(sa.equals(await save(c)), 'another seed, another stream');
    await a.regionWrite(0, 10, Buffer.from('hello'));
    const withRegs = await save(a);
    t.not(dst.stateDigest(), a.stateDigest());
    await restore(dst, withRegs);
    t.is(dst.resumeResult?.verified, true);
    t.is(dst.resumeResult?.bytes, withRegs.length);
    t.is(dst.resumeResult?.digest, a.stateDigest());
    t.is(dst.stateDigest(), a.stateDigest());
    t.is(dst.seed, 42n);
    t.is((await dst.regionRead(0, 10, 5)).toString(), 'hello', 'registers travel in the stream');
    t.true((await save(dst)).equals(withRegs), 'the restored device saves the same stream');
  } finally {
    await closeAll(a, b, c, dst);
  }
});

test('resume rejects a stream for another size, a corrupt payload byte (naming its offset) and trailing data', async (t) => {
  const src = createSimDevice('sim:size=1MiB,seed=3');
  const small = createSimDevice('sim:size=512KiB');
  const dst = createSimDevice('sim:size=1MiB');
  try {
    const data = await save(src);
    let fd = (await small.setState(MigState.RESUMING))!;
    await io.write(fd.fd, data.subarray(0, 64)).catch(() => undefined);
    const e1 = await t.throwsAsync(() => small.setState(MigState.RUNNING), { instanceOf: VfioDeviceError });
    t.is(e1!.errno, 22);
    t.is(e1!.state, MigState.RESUMING);
    t.regex(e1!.message, /1048576-byte state, this device has 524288/);
    await fd.close();

    const bad = Buffer.from(data);
    const at = 64 + 16 + 1000; // inside block 0's payload
    bad[at] = bad[at]! ^ 1;
    fd = (await dst.setState(MigState.RESUMING))!;
    const w = await io.write(fd.fd, bad).then(
      () => 'ok',
      (e: MigbridgeError) => e.code,
    );
    t.true(w === 'ok' || w === 'EPIPE', `write: ${w}`);
    const e2 = await t.throwsAsync(() => dst.setState(MigState.STOP), { instanceOf: VfioDeviceError });
    t.regex(e2!.message, new RegExp(`block 0 gen 0: content differs at stream offset ${at}`));
    t.is(dst.resumeResult?.verified, false);
    await fd.close();
    await dst.reset();

    fd = (await dst.setState(MigState.RESUMING))!;
    await io.write(fd.fd, Buffer.concat([data, Buffer.from([0])])).catch(() => undefined);
    const e3 = await t.throwsAsync(() => dst.setState(MigState.STOP), { instanceOf: VfioDeviceError });
    t.regex(e3!.message, /trailing data at stream offset/);
    await fd.close();
    await dst.reset();
    await restore(dst, data);
    t.true(dst.resumeResult?.verified);
  } finally {
    await closeAll(src, small, dst);
  }
});

test('PRE_COPY with dirtying: rounds of dirty data, then STOP_COPY; the restore matches the source', async (t) => {
  const src = createSimDevice('sim:size=4MiB,seed=9,precopy=1MiB,dirty=256MiB/s') as SimDevice;
  const dst = createSimDevice('sim:size=4MiB') as SimDevice;
  try {
    const fd = (await src.setState(MigState.PRE_COPY))!;
    const i0 = await src.precopyInfo();
    t.true(i0.initialBytes > BigInt(MiB), `initial ${i0.initialBytes}`);
    const parts = [await readExactly(fd, Number(i0.initialBytes + i0.dirtyBytes))];
    await new Promise((r) => setTimeout(r, 60));
    const i1 = await src.precopyInfo();
    t.is(i1.initialBytes, 0n);
    t.true(i1.dirtyBytes > 0n, 'the running device dirtied blocks');
    parts.push(await readExactly(fd, Number(i1.dirtyBytes)));
    const estimate = await src.stopCopySize();
    t.true(estimate < BigInt(fullStreamBytes(4 * MiB)), 'precopy shrinks the stop-copy estimate');
    await src.setState(MigState.STOP_COPY);
    const rest = await readAll(fd);
    t.true(BigInt(rest.length) >= estimate - BigInt(4 * 65552), 'stop-copy close to the estimate');
    await fd.verifyEnd();
    parts.push(rest);
    await src.setState(MigState.STOP);
    await fd.close();
    await restore(dst, Buffer.concat(parts));
    t.true(dst.resumeResult?.verified);
    t.is(dst.stateDigest(), src.stateDigest());
  } finally {
    await closeAll(src, dst);
  }
});

test('fail=eio@N: the saving stream stops at N bytes and verifyEnd reports EIO; the device stays usable', async (t) => {
  const dev = createSimDevice('sim:id=eio-dev,size=2MiB,fail=eio@100000');
  try {
    const fd = (await dev.setState(MigState.STOP_COPY))!;
    const data = await readAll(fd);
    t.is(data.length, 100000);
    const e = await t.throwsAsync(() => fd.verifyEnd(), { instanceOf: VfioDeviceError });
    t.is(e!.errno, 5);
    t.is(e!.device, 'eio-dev');
    t.regex(e!.message, /injected EIO at stream offset 100000/);
    await fd.close();
    t.is(await dev.setState(MigState.RUNNING), null);
    t.is(await dev.state(), MigState.RUNNING);
  } finally {
    await dev.close();
  }
});

test('fail=eio@N on resume: writes fail with EPIPE, the exit fails with EIO, reset recovers', async (t) => {
  const src = createSimDevice('sim:size=2MiB');
  const dst = createSimDevice('sim:size=2MiB,fail=eio@300000');
  try {
    const data = await save(src);
    const fd = (await dst.setState(MigState.RESUMING))!;
    const err = await t.throwsAsync(() => io.write(fd.fd, data, { timeoutMs: 10_000 }), { instanceOf: MigbridgeError });
    t.is(err!.code, 'EPIPE');
    const e = await t.throwsAsync(() => dst.setState(MigState.RUNNING), { instanceOf: VfioDeviceError });
    t.is(e!.errno, 5);
    t.is(e!.state, MigState.RESUMING);
    await fd.close();
    await dst.reset();
    t.is(await dst.state(), MigState.RUNNING);
  } finally {
    await closeAll(src, dst);
  }
});

test('fail=stall@N: reads block after N bytes until the session ends; verifyEnd then reports ENODEV', async (t) => {
  const dev = createSimDevice('sim:size=2MiB,fail=stall@65536');
  try {
    const fd = (await dev.setState(MigState.STOP_COPY))!;
    t.is((await readExactly(fd, 65536)).length, 65536);
    const timedOut = await t.throwsAsync(() => io.read(fd.fd, { timeoutMs: 200 }), { instanceOf: MigbridgeError });
    t.truthy(timedOut);
    await dev.setState(MigState.STOP);
    const b = await io.read(fd.fd, { timeoutMs: 5000 });
    t.is(b.data.length, 0, 'the ended session reads EOF');
    b.release();
    const e = await t.throwsAsync(() => fd.verifyEnd(), { instanceOf: VfioDeviceError });
    t.is(e!.errno, 19);
    await fd.close();
  } finally {
    await dev.close();
  }
});

test.serial('fail=slow-stop: four slow STOPs run in parallel through setStates', async (t) => {
  const devs = [0, 1, 2, 3].map(() => createSimDevice('sim:size=64KiB,fail=slow-stop@300ms'));
  try {
    const t0 = performance.now();
    const res = await setStates(devs, MigState.STOP);
    const ms = performance.now() - t0;
    t.true(res.every((r) => r.ok));
    t.true(ms >= 290, `${ms} ms`);
    t.true(ms < 1100, `parallel, not 4 x 300 ms: ${ms} ms`);
  } finally {
    await closeAll(...devs);
  }
});

test('fail=bad-resume: a valid stream is refused with EINVAL, stays RESUMING until reset', async (t) => {
  const src = createSimDevice('sim:size=256KiB');
  const dst = createSimDevice('sim:size=256KiB,fail=bad-resume') as SimDevice;
  try {
    const data = await save(src);
    const fd = (await dst.setState(MigState.RESUMING))!;
    await io.write(fd.fd, data);
    const e = await t.throwsAsync(() => dst.setState(MigState.RUNNING), { instanceOf: VfioDeviceError });
    t.is(e!.errno, 22);
    t.is(await dst.state(), MigState.RESUMING);
    t.is(dst.resumeResult?.verified, false);
    await fd.close();
    await dst.reset();
    t.is(await dst.state(), MigState.RUNNING);
  } finally {
    await closeAll(src, dst);
  }
});

test('fail=error@resuming: the arc fails into ERROR with EIO; SETs get EINVAL until reset', async (t) => {
  const dev = createSimDevice('sim:size=64KiB,fail=error@resuming');
  try {
    const e = await t.throwsAsync(() => dev.setState(MigState.RESUMING), { instanceOf: VfioDeviceError });
    t.is(e!.errno, 5);
    t.is(e!.state, MigState.ERROR);
    t.is(e!.requested, MigState.RESUMING);
    const e2 = await t.throwsAsync(() => dev.setState(MigState.RUNNING), { instanceOf: VfioDeviceError });
    t.is(e2!.errno, 22);
    await dev.reset();
    t.is(await dev.state(), MigState.RUNNING);
  } finally {
    await dev.close();
  }
});

test.serial('rate and latency shape production', async (t) => {
  const slow = createSimDevice('sim:size=4MiB,rate=40MiB/s');
  const lat = createSimDevice('sim:size=4MiB,chunk=1MiB,latency=40ms');
  try {
    let t0 = performance.now();
    await save(slow);
    const ms1 = performance.now() - t0;
    t.true(ms1 >= 90, `4 MiB at 40 MiB/s took ${ms1} ms`);
    t0 = performance.now();
    await save(lat);
    const ms2 = performance.now() - t0;
    t.true(ms2 >= 150, `5 chunks x 40 ms took ${ms2} ms`);
  } finally {
    await closeAll(slow, lat);
  }
});

test('16 instances save and restore at once, each verified against its own source', async (t) => {
  const srcs = Array.from({ length: 16 }, (_, i) => createSimDevice(`sim:size=1MiB,seed=${100 + i}`) as SimDevice);
  const dsts = Array.from({ length: 16 }, () => createSimDevice('sim:size=1MiB') as SimDevice);
  try {
    t.is(new Set(srcs.map((d) => d.id)).size, 16);
    const streams = await Promise.all(srcs.map((d) => save(d)));
    await Promise.all(dsts.map((d, i) => restore(d, streams[i]!)));
    for (let i = 0; i < 16; i++) {
      t.true(dsts[i]!.resumeResult?.verified);
      t.is(dsts[i]!.stateDigest(), srcs[i]!.stateDigest());
    }
  } finally {
    await closeAll(...srcs, ...dsts);
  }
});

test('a 0-byte device still has a stream (header, registers, end) and round-trips', async (t) => {
  const src = createSimDevice('sim:size=0');
  const dst = createSimDevice('sim:size=0') as SimDevice;
  try {
    t.is(await src.stopCopySize(), BigInt(fullStreamBytes(0)));
    const data = await save(src);
    t.is(data.length, fullStreamBytes(0));
    await restore(dst, data);
    t.true(dst.resumeResult?.verified);
  } finally {
    await closeAll(src, dst);
  }
});

test('closing the device ends its session; later calls fail with EBADF', async (t) => {
  const dev = createSimDevice('sim:size=2MiB');
  const fd = (await dev.setState(MigState.STOP_COPY))!;
  await dev.close();
  t.is((await readAll(fd)).length, 0, 'unread data is discarded, reads get EOF');
  await fd.close();
  const e = await t.throwsAsync(() => dev.state(), { instanceOf: VfioDeviceError });
  t.is(e!.errno, 9);
  await dev.close(); // idempotent
});
