// Device conformance suite: the behaviour docs/vfio-migration.md requires of a VFIO migration
// driver, checked on any MigrationDevice. Runs on the simulator in the normal test
// command (conformance-sim.test.ts) and, unchanged, on mtty in the kernel lane, which
// calls runConformance() with kernel devices and the mtty options below.
//
// Every test starts with reset() (mtty keeps its state across close) and runs serially
// (a kernel lane may hand out the same device to every test).
import type { ExecutionContext, TestFn } from 'ava';
import { ALL_STATES, FsmError, MigFlag, MigState, isSavingState, stateName, supportsState, transition } from '../../src/fsm/index.js';
import { Probe, type IoOutcome } from '../../src/check/probe.js';
import { Errno } from '../../src/errno.js';
import { type IoEngine, defaultEngine } from '../../src/native/index.js';
import { type DataFd, type MigrationDevice, VfioDeviceError, setStates } from '../../src/vfio/device.js';

const { EBADF, EINVAL, ENOMSG } = Errno;

export interface ConformanceOptions {
  /** Title prefix, e.g. "sim flags=7" or "mtty". */
  name: string;
  /**
   * What read() on a saving data_fd gives once its session has ended: 'eof' (0) and/or
   * errnos. Kernel drivers: ENODEV (19); the simulator's pipe: 'eof'.
   */
  endedRead: readonly ('eof' | number)[];
  /**
   * Errnos accepted for write() on a resuming data_fd after its session ended.
   * mtty: ENODEV, and ENOMEM (12) when the complete stream was already written (its size
   * check runs before the disabled check); the simulator: EPIPE (32).
   */
  endedWrite: readonly number[];
  /** What read() gives at a temporary end in PRE_COPY*: 'zero' and/or ENOMSG (mtty: 0, mlx5: ENOMSG). */
  precopyEmpty: readonly ('zero' | 'ENOMSG')[];
  /** Expected migration flags (mtty: 7); omitted = whatever the device reports. */
  flags?: number;
  /** Exact length of a STOP_COPY stream (mtty-1: 60, mtty-2: 96). */
  streamBytes?: number;
  /** MIG_DATA_SIZE equals the real STOP_COPY stream length (true for mtty and the simulator). */
  exactDataSize?: boolean;
  /** Upper bound on a stream the suite will buffer (default 64 MiB). */
  maxStreamBytes?: number;
  /** True when makeDevice() returns a different device each call (parallel test). */
  distinctDevices?: boolean;
  /**
   * A device that fails into ERROR on the arc entering `target` (simulator fault). Kernel
   * devices such as mtty cannot be driven into ERROR, so the kernel lane leaves it out.
   */
  errorDevice?: { make: () => Promise<MigrationDevice>; target: MigState };
  /**
   * Set only for kernels WITHOUT the 6.12.117 / v7.2 guard: they spin forever on
   * STOP_COPY -> PRE_COPY* (docs/vfio-migration.md §6), so those two requests are not issued.
   */
  unfixedKernel?: boolean;
  /** Per-read/write deadline (default 10 s): a hang fails the test instead of the run. */
  ioTimeoutMs?: number;
  io?: IoEngine;
}

/** The device under test, driven through check's Probe (the same reads, writes and fd tracking as `migbridge check`). */
class Ctx {
  readonly probe: Probe;
  constructor(
    readonly t: ExecutionContext,
    readonly dev: MigrationDevice,
    readonly io: IoEngine,
    readonly o: ConformanceOptions,
  ) {
    this.probe = new Probe(dev, dev.id, io, o.ioTimeoutMs ?? 10_000, o.maxStreamBytes ?? 64 * 1024 * 1024);
  }

  track(fd: DataFd | null): DataFd | null {
    return this.probe.track(fd);
  }

  cleanup(): Promise<void> {
    return this.probe.closeFds();
  }

  read(fd: DataFd, length = 65536): Promise<IoOutcome> {
    return this.probe.read(fd, length);
  }

  write(fd: DataFd, data: Buffer): Promise<IoOutcome> {
    return this.probe.write(fd, data);
  }

  /** Reads until read() returns 0 (STOP_COPY: the end of the state). */
  async readToEnd(fd: DataFd): Promise<Buffer> {
    const parts: Buffer[] = [];
    let total = 0;
    const max = this.probe.maxStreamBytes;
    for (;;) {
      const r = await this.read(fd, 1 << 20);
      if ('errno' in r) throw new Error(`read on ${fd.device} data_fd failed with errno ${r.errno} after ${total} bytes`);
      if (r.n === 0) return Buffer.concat(parts);
      parts.push(r.data);
      total += r.n;
      if (total > max) throw new Error(`stream of ${fd.device} exceeds ${max} bytes`);
    }
  }

  async readExactly(fd: DataFd, n: number): Promise<Buffer> {
    const parts: Buffer[] = [];
    let got = 0;
    while (got < n) {
      const r = await this.read(fd, Math.min(1 << 20, n - got));
      if ('errno' in r) throw new Error(`read failed with errno ${r.errno} after ${got}/${n} bytes`);
      if (r.n === 0) throw new Error(`read returned 0 after ${got}/${n} bytes`);
      parts.push(r.data);
      got += r.n;
    }
    return Buffer.concat(parts);
  }

  async set(target: MigState): Promise<DataFd | null> {
    return this.track(await this.dev.setState(target));
  }

  /** Asserts the SET fails with `errno` and the device's own state afterwards. */
  async setFails(target: number, errno: number | undefined, stateAfter: MigState | 'any'): Promise<VfioDeviceError> {
    const e = await this.t.throwsAsync(() => this.dev.setState(target as MigState), { instanceOf: VfioDeviceError });
    if (errno !== undefined) this.t.is(e!.errno, errno, `SET ${stateName(target)}: errno`);
    this.t.is(e!.device, this.dev.id);
    this.t.is(e!.requested, target as MigState);
    const now = await this.dev.state();
    this.t.is(e!.state, now, 'error reports the actual state');
    if (stateAfter !== 'any') this.t.is(stateName(now), stateName(stateAfter), `state after failed SET ${stateName(target)}`);
    return e!;
  }

  async expectState(s: MigState, msg = ''): Promise<void> {
    this.t.is(stateName(await this.dev.state()), stateName(s), msg);
  }

  /** read() on a saving fd whose session ended. */
  async expectEndedRead(fd: DataFd, what: string): Promise<void> {
    const r = await this.read(fd);
    const got = 'errno' in r ? r.errno : r.n === 0 ? 'eof' : `${r.n} bytes`;
    this.t.true(this.o.endedRead.includes(got as 'eof' | number), `${what}: read after the session ended gave ${got}, expected ${this.o.endedRead.join(' or ')}`);
  }

  async expectEndedWrite(fd: DataFd, what: string): Promise<void> {
    const r = await this.write(fd, Buffer.from([0]));
    const got = 'errno' in r ? r.errno : `${r.n} bytes written`;
    this.t.true(typeof got === 'number' && this.o.endedWrite.includes(got), `${what}: write after the session ended gave ${got}, expected errno ${this.o.endedWrite.join(' or ')}`);
  }

  async flags(): Promise<number> {
    return this.dev.migrationFlags();
  }

  /** A complete STOP_COPY stream of this device (device left in RUNNING). */
  async captureStream(): Promise<Buffer> {
    await this.dev.reset();
    const fd = (await this.set(MigState.STOP_COPY))!;
    const data = await this.readToEnd(fd);
    await fd.verifyEnd();
    await this.dev.reset();
    return data;
  }
}

export type MakeDevice = () => Promise<MigrationDevice>;

/**
 * Opens n devices; if any open fails, closes the ones already open before rethrowing. A
 * device left open keeps its VFIO group (or cdev) busy, so every later test on it fails
 * to open (in the kernel lane one such leak failed 63 tests).
 */
export async function openAll(makeDevice: MakeDevice, n: number): Promise<MigrationDevice[]> {
  const opened = await Promise.allSettled(Array.from({ length: n }, async () => makeDevice()));
  const failed = opened.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (!failed) return opened.map((r) => (r as PromiseFulfilledResult<MigrationDevice>).value);
  for (const r of opened) if (r.status === 'fulfilled') await r.value.close().catch(() => undefined);
  throw failed.reason;
}

export function runConformance(test: TestFn, makeDevice: MakeDevice, opts: ConformanceOptions): void {
  const io = (): IoEngine => opts.io ?? defaultEngine();
  const it = (title: string, body: (c: Ctx) => Promise<void>): void => {
    test.serial(`${opts.name}: ${title}`, async (t) => {
      const dev = await makeDevice();
      const c = new Ctx(t, dev, io(), opts);
      try {
        await dev.reset();
        await body(c);
      } finally {
        await c.cleanup();
        await dev.reset().catch(() => undefined);
        await dev.close();
      }
    });
  };

  it('capabilities: flags, RUNNING after reset, MIG_DATA_SIZE, GET never returns a data_fd', async (c) => {
    const flags = await c.flags();
    if (opts.flags !== undefined) c.t.is(flags, opts.flags);
    c.t.true((flags & MigFlag.STOP_COPY) !== 0, 'STOP_COPY is mandatory');
    await c.expectState(MigState.RUNNING);
    const size = await c.dev.stopCopySize();
    c.t.true(size > 0n);
    if (opts.streamBytes !== undefined) c.t.is(size, BigInt(opts.streamBytes));
    // SET to the current state is a no-op returning no fd.
    c.t.is(await c.set(MigState.RUNNING), null);
    await c.expectState(MigState.RUNNING);
  });

  it('STOP_COPY stream: read until 0, length matches MIG_DATA_SIZE, EOF persists, ended session', async (c) => {
    const estimate = await c.dev.stopCopySize();
    const fd = (await c.set(MigState.STOP_COPY))!;
    c.t.truthy(fd, 'RUNNING -> STOP_COPY returns a data_fd');
    c.t.is(fd.direction, 'save');
    await c.expectState(MigState.STOP_COPY);
    c.t.is(await c.dev.stopCopySize(), estimate, 'MIG_DATA_SIZE is stable');
    const data = await c.readToEnd(fd);
    await fd.verifyEnd();
    if (opts.streamBytes !== undefined) c.t.is(data.length, opts.streamBytes);
    if (opts.exactDataSize !== false) c.t.is(BigInt(data.length), estimate);
    const again = await c.read(fd);
    c.t.deepEqual('errno' in again ? again : again.n, 0, 'read after the end keeps returning 0');
    const w = await c.write(fd, Buffer.from([1]));
    c.t.deepEqual(w, { errno: EBADF }, 'a saving fd is read-only');
    c.t.is(await c.set(MigState.STOP), null);
    await c.expectEndedRead(fd, 'STOP_COPY -> STOP');
    await c.expectState(MigState.STOP);
  });

  it('PRE_COPY: precopy info, temporary end, same fd continues into STOP_COPY with an identical stream', async (c) => {
    const flags = await c.flags();
    if (!(flags & MigFlag.PRE_COPY)) {
      await c.setFails(MigState.PRE_COPY, EINVAL, MigState.RUNNING);
      await c.t.throwsAsync(() => c.dev.precopyInfo(), { instanceOf: VfioDeviceError, message: /EINVAL/ });
      return;
    }
    const plain = await c.captureStream();
    const fd = (await c.set(MigState.PRE_COPY))!;
    c.t.is(fd.direction, 'save');
    const info = await c.dev.precopyInfo();
    c.t.true(info.initialBytes > 0n, 'initial_bytes starts nonzero');
    c.t.true(info.dirtyBytes >= 0n);
    const initial = await c.readExactly(fd, Number(info.initialBytes + info.dirtyBytes));
    const after = await c.dev.precopyInfo();
    c.t.is(after.initialBytes, 0n, 'initial_bytes drops to 0 once read');
    c.t.is(after.dirtyBytes, 0n);
    const empty = await c.read(fd);
    const got = 'errno' in empty ? (empty.errno === ENOMSG ? 'ENOMSG' : `errno ${empty.errno}`) : empty.n === 0 ? 'zero' : `${empty.n} bytes`;
    c.t.true(opts.precopyEmpty.includes(got as 'zero' | 'ENOMSG'), `temporary end gave ${got}`);
    await c.expectState(MigState.PRE_COPY);
    c.t.is(await c.set(MigState.STOP_COPY), null, 'PRE_COPY -> STOP_COPY keeps the same fd');
    await c.t.throwsAsync(() => c.dev.precopyInfo(), { instanceOf: VfioDeviceError, message: /EINVAL/ }, 'PRECOPY_INFO in STOP_COPY');
    const rest = await c.readToEnd(fd);
    await fd.verifyEnd();
    c.t.true(Buffer.concat([initial, rest]).equals(plain), 'PRE_COPY + STOP_COPY stream equals a plain STOP_COPY stream');
    await c.set(MigState.STOP);
    await c.expectEndedRead(fd, 'STOP_COPY -> STOP');
  });

  it('PRECOPY_INFO is EINVAL outside PRE_COPY*', async (c) => {
    await c.t.throwsAsync(() => c.dev.precopyInfo(), { instanceOf: VfioDeviceError, message: /EINVAL/ }, 'in RUNNING');
    c.track(await c.set(MigState.STOP_COPY));
    await c.t.throwsAsync(() => c.dev.precopyInfo(), { instanceOf: VfioDeviceError, message: /EINVAL/ }, 'in STOP_COPY');
  });

  it('resume round trip: write, close the fd early, SET RUNNING loads it', async (c) => {
    const stream = await c.captureStream();
    const fd = (await c.set(MigState.RESUMING))!;
    c.t.is(fd.direction, 'resume');
    await c.expectState(MigState.RESUMING);
    c.t.deepEqual(await c.read(fd), { errno: EBADF }, 'a resuming fd is write-only');
    const w = await c.write(fd, stream);
    c.t.deepEqual('errno' in w ? w : w.n, stream.length);
    await fd.close();
    c.t.is(await c.set(MigState.RUNNING), null);
    await c.expectState(MigState.RUNNING);
    // The device's state is now the stream's: saving again gives the same bytes.
    c.t.true((await c.captureStream()).equals(stream), 'a restored device saves the same stream');
  });

  it('SET RESUMING while RESUMING is a no-op without a new fd', async (c) => {
    c.track(await c.set(MigState.RESUMING));
    c.t.is(await c.set(MigState.RESUMING), null);
    await c.expectState(MigState.RESUMING);
  });

  it('truncated resume: exit fails with EINVAL, stays RESUMING, the rest can follow', async (c) => {
    const stream = await c.captureStream();
    const fd = (await c.set(MigState.RESUMING))!;
    c.t.deepEqual(await c.write(fd, stream.subarray(0, stream.length - 1)), { n: stream.length - 1, data: stream.subarray(0, stream.length - 1) });
    await c.setFails(MigState.RUNNING, EINVAL, MigState.RESUMING);
    const w = await c.write(fd, stream.subarray(stream.length - 1));
    c.t.false('errno' in w, 'the resume fd stays usable after a failed exit');
    c.t.is(await c.set(MigState.RUNNING), null);
    await c.expectState(MigState.RUNNING);
  });

  it('empty resume: exit fails with EINVAL, reset recovers', async (c) => {
    const fd = (await c.set(MigState.RESUMING))!;
    await c.setFails(MigState.STOP, EINVAL, MigState.RESUMING);
    await c.dev.reset();
    await c.expectState(MigState.RUNNING);
    await c.expectEndedWrite(fd, 'reset in RESUMING');
  });

  it('corrupt resume data is refused (write or exit fails) and reset recovers the device', async (c) => {
    const stream = await c.captureStream();
    const bad = Buffer.from(stream);
    bad[0] = bad[0]! ^ 0xff; // the first magic byte
    const fd = (await c.set(MigState.RESUMING))!;
    const w = await c.write(fd, bad);
    let exitFailed = false;
    try {
      await c.dev.setState(MigState.RUNNING);
    } catch (e) {
      c.t.true(e instanceof VfioDeviceError);
      exitFailed = true;
      await c.expectState(MigState.RESUMING, 'a refused stream leaves the device in RESUMING');
    }
    c.t.true('errno' in w || exitFailed, 'a corrupt stream must fail a write or the exit from RESUMING');
    await c.dev.reset();
    await c.expectState(MigState.RUNNING);
    // Usable afterwards: a valid stream loads.
    const fd2 = (await c.set(MigState.RESUMING))!;
    c.t.false('errno' in (await c.write(fd2, stream)));
    c.t.is(await c.set(MigState.RUNNING), null);
    await c.expectState(MigState.RUNNING);
  });

  it('invalid requests: EINVAL and the state is unchanged', async (c) => {
    for (const target of [MigState.ERROR, 8, 99, 0xffffffff]) await c.setFails(target, EINVAL, MigState.RUNNING);
    const flags = await c.flags();
    for (const s of ALL_STATES) if (s !== MigState.ERROR && !supportsState(flags, s)) await c.setFails(s, EINVAL, MigState.RUNNING);
    c.track(await c.set(MigState.STOP_COPY));
    if (!opts.unfixedKernel && flags & MigFlag.PRE_COPY) {
      await c.setFails(MigState.PRE_COPY, EINVAL, MigState.STOP_COPY);
      if (flags & MigFlag.P2P) await c.setFails(MigState.PRE_COPY_P2P, EINVAL, MigState.STOP_COPY);
    }
    await c.setFails(MigState.ERROR, EINVAL, MigState.STOP_COPY);
  });

  it('reset ends a saving session and returns to RUNNING', async (c) => {
    const flags = await c.flags();
    const fd = (await c.set(flags & MigFlag.PRE_COPY ? MigState.PRE_COPY : MigState.STOP_COPY))!;
    await c.dev.reset();
    await c.expectState(MigState.RUNNING);
    await c.expectEndedRead(fd, 'reset');
  });

  it('resume fd after a successful exit: writes fail', async (c) => {
    const stream = await c.captureStream();
    const fd = (await c.set(MigState.RESUMING))!;
    await c.write(fd, stream);
    await c.set(MigState.STOP);
    await c.expectEndedWrite(fd, 'RESUMING -> STOP');
  });

  if (opts.errorDevice) {
    const ed = opts.errorDevice;
    test.serial(`${opts.name}: a failed arc into ERROR: only reset leaves it`, async (t) => {
      const dev = await ed.make();
      const c = new Ctx(t, dev, io(), opts);
      try {
        await dev.reset();
        const e = await c.setFails(ed.target, undefined, MigState.ERROR);
        t.not(e.errno, EINVAL, 'a driver failure is not the FSM EINVAL');
        t.is(await dev.setState(MigState.ERROR), null, 'SET ERROR while in ERROR is a no-op');
        await c.setFails(MigState.RUNNING, EINVAL, MigState.ERROR);
        await c.setFails(MigState.STOP, EINVAL, MigState.ERROR);
        await dev.reset();
        await c.expectState(MigState.RUNNING);
        c.t.is(await c.set(MigState.STOP), null);
        await c.expectState(MigState.STOP);
      } finally {
        await c.cleanup();
        await dev.close();
      }
    });
  }

  if (opts.distinctDevices) {
    test.serial(`${opts.name}: setStates drives several devices at once`, async (t) => {
      const devs = await openAll(makeDevice, 3);
      const fds: DataFd[] = [];
      try {
        t.is(new Set(devs.map((d) => d.id)).size, devs.length, 'distinct ids');
        await Promise.all(devs.map((d) => d.reset()));
        const res = await setStates(devs, MigState.STOP_COPY);
        for (const r of res) if (r.ok && r.dataFd) fds.push(r.dataFd);
        t.true(res.every((r) => r.ok && r.dataFd !== null && r.dataFd.direction === 'save'));
        const bad = await setStates(devs, MigState.ERROR);
        t.true(bad.every((r) => !r.ok && r.error instanceof VfioDeviceError && r.error.errno === EINVAL));
      } finally {
        for (const fd of fds) await fd.close().catch(() => undefined);
        for (const d of devs) await d.reset().catch(() => undefined);
        for (const d of devs) await d.close();
      }
    });
  }

  // ---- every (from, to) pair the flags allow, against src/fsm -------------------------

  const arcCase = async (c: Ctx, from: MigState, to: MigState, stream: Buffer): Promise<void> => {
    const flags = await c.flags();
    // Drive the device to `from` (RUNNING after reset).
    const fd0 = await c.set(from);
    if (from === MigState.RESUMING) {
      const w = await c.write(fd0!, stream);
      c.t.false('errno' in w, 'writing a valid stream');
    }
    await c.expectState(from, `reached ${stateName(from)}`);

    if (!opts.unfixedKernel || !(from === MigState.STOP_COPY && (to === MigState.PRE_COPY || to === MigState.PRE_COPY_P2P))) {
      let expected: ReturnType<typeof transition> | FsmError;
      try {
        expected = transition(flags, from, to);
      } catch (e) {
        if (!(e instanceof FsmError)) throw e;
        expected = e;
      }
      if (expected instanceof FsmError) {
        await c.setFails(to, EINVAL, from);
        if (fd0 && isSavingState(from)) {
          // The session is untouched: its data still flows.
          const r = await c.read(fd0, 1);
          c.t.false('errno' in r, 'the open session survives a refused SET');
        }
        return;
      }
      const fd = await c.set(to);
      await c.expectState(to);
      c.t.is(fd !== null, expected.dataFd, `data_fd returned: ${expected.dataFd} (path ${expected.path.map(stateName).join(' -> ')})`);
      if (fd) c.t.is(fd.direction, to === MigState.RESUMING ? 'resume' : 'save');
      if (!fd0 || from === to) return;
      if (expected.endsSession) {
        if (fd0.direction === 'save') await c.expectEndedRead(fd0, `${stateName(from)} -> ${stateName(to)}`);
        else await c.expectEndedWrite(fd0, `${stateName(from)} -> ${stateName(to)}`);
      } else if (to === MigState.STOP_COPY) {
        // Same saving session: the rest of the state arrives on the old fd, then EOF.
        c.t.true((await c.readToEnd(fd0)).length > 0);
        await fd0.verifyEnd();
      } else {
        // PRE_COPY <-> PRE_COPY_P2P: the session and its precopy info stay valid.
        const info = await c.dev.precopyInfo();
        c.t.true(info.initialBytes > 0n);
      }
    }
  };

  const targets = [...ALL_STATES, 8];
  for (const from of ALL_STATES) {
    if (from === MigState.ERROR) continue; // only a driver failure gets there (errorDevice test)
    for (const to of targets) {
      test.serial(`${opts.name}: SET ${stateName(from)} -> ${stateName(to)} matches src/fsm`, async (t) => {
        const dev = await makeDevice();
        const c = new Ctx(t, dev, io(), opts);
        try {
          const flags = await dev.migrationFlags();
          await dev.reset();
          if (!supportsState(flags, from)) {
            // Unreachable with these flags: the request to get there must be refused.
            await c.setFails(from, EINVAL, MigState.RUNNING);
            return;
          }
          const stream = from === MigState.RESUMING ? await c.captureStream() : Buffer.alloc(0);
          await arcCase(c, from, to as MigState, stream);
        } finally {
          await c.cleanup();
          await dev.reset().catch(() => undefined);
          await dev.close();
        }
      });
    }
  }
}
