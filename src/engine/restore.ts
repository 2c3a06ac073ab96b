// Parallel multi-device restore: all devices enter RESUMING at once; every DATA_STATE
// chunk is written to its device's data_fd as soon as the stream delivers it, writes to
// different devices in flight together (bounded bytes in flight); then STOP and RUNNING,
// where the kernel validates each device's data on its exit from RESUMING.
import { MigbridgeError } from '../errors.js';
import { type DestinationPhase, MigFlag, type PlanStep, destinationPlan, planStep, stateName } from '../fsm/index.js';
import { defaultEngine, retainPooled, type IoEngine } from '../native/index.js';
import { type ByteSource, type StreamEvent, StreamError, readStream } from '../qemu/index.js';
import { type DataFd, type MigrationDevice, VfioDeviceError, setStates } from '../vfio/device.js';
import { Errno } from '../vfio/uapi.js';
import { CancelledError, abortReason, untilCancelled, throwIfCancelled, whenCancelled } from './cancel.js';
import type { NoteSink } from './notes.js';
import type { ProgressCounter, ProgressSink } from './progress.js';
import { resetDevice } from './recover.js';
import { ResumeRouter } from './resume-route.js';

export interface RestoreOptions {
  /** Decoded stream events (e.g. readStreamFile(path)) or raw bytes to decode. */
  readonly events?: AsyncIterable<StreamEvent>;
  readonly source?: ByteSource;
  readonly devices: readonly MigrationDevice[];
  /** The idstr each device would save under (default `0000:00:<04+i>.0/vfio`), used to match sections. */
  readonly idstrs?: readonly string[];
  /** --map IDSTR=device index. */
  readonly map?: ReadonlyMap<string, number>;
  readonly io?: IoEngine;
  readonly progress?: ProgressSink;
  /** Bytes written but not yet completed, over all devices (default 16 MiB: with the read-ahead of the stream, part of the 64 MiB memory budget). */
  readonly maxInFlight?: number;
  /** Device data one section may carry (default 64 GiB): a stream past it is refused. */
  readonly maxDeviceBytes?: number;
  /**
   * The same stream once more (e.g. a second readStreamFile of the file), read whole
   * before any device changes state: a stream with a structural fault (see
   * ResumeStreamCheck, unmatched sections, truncation) is then refused with no device
   * touched. A socket cannot be read twice: without it the checks run as data arrives.
   */
  readonly preflight?: AsyncIterable<StreamEvent>;
  /**
   * Cancels the restore: writes in flight are interrupted, the stream is no longer read,
   * every destination is reset, and restore() rejects with CancelledError (its
   * `recovery` lists each reset). Once the devices are started the restore completes.
   */
  readonly signal?: AbortSignal;
  /** Milestones as they happen (all devices RESUMING, each device's first data). */
  readonly onNote?: NoteSink;
}

export interface DeviceRestoreReport {
  readonly id: string;
  readonly idstr: string | null;
  readonly bytes: number;
  readonly chunks: number;
  readonly ok: boolean;
  readonly error?: Record<string, unknown>;
  /** What was done to a failed device (reset back to RUNNING). */
  readonly recovery?: string;
  /** Devices that check their own state on the exit from RESUMING (the simulator's digest) say whether it matched. */
  readonly verified?: boolean;
  /** What `verified` checked, in words (it proves the state arrived intact, not which source sent it). */
  readonly verifiedAgainst?: string;
  /** The state arrived intact but from another source than the device's spec names (sim seed=). */
  readonly sourceMismatch?: string;
  readonly seconds: number;
}

export interface RestoreReport {
  readonly devices: DeviceRestoreReport[];
  readonly totalBytes: number;
  readonly seconds: number;
  readonly ok: boolean;
}

/** Some devices failed to restore; `report` says which and what happened to each. */
export class RestoreFailedError extends MigbridgeError {
  constructor(
    message: string,
    readonly report: RestoreReport,
  ) {
    super('ERESTORE', message);
  }
}

interface Target {
  readonly dev: MigrationDevice;
  idstr: string | null;
  dataFd: DataFd | null;
  bytes: number;
  chunks: number;
  writes: Promise<void>;
  error: Error | undefined;
  recovery: string | undefined;
  started: bigint;
  finished: bigint;
  counter: ProgressCounter | undefined;
  /** MIG_DATA_SIZE before RESUMING: no DATA_STATE record may be larger (undefined when the device does not say). */
  limit: number | undefined;
  /** The SETs this device takes, phase by phase. */
  plan: PlanStep<DestinationPhase>[];
}

const now = () => process.hrtime.bigint();

export async function restore(opts: RestoreOptions): Promise<RestoreReport> {
  const io = opts.io ?? defaultEngine();
  const maxInFlight = opts.maxInFlight ?? 16 << 20;
  const t0 = now();
  if (opts.devices.length === 0) throw new MigbridgeError('EUSAGE', 'restore needs at least one device');
  const events = opts.events ?? (opts.source ? readStream(opts.source) : undefined);
  if (!events) throw new MigbridgeError('EUSAGE', 'restore needs a stream (events or source)');
  const targets: Target[] = opts.devices.map((dev) => ({
    dev,
    idstr: null,
    dataFd: null,
    bytes: 0,
    chunks: 0,
    writes: Promise.resolve(),
    error: undefined,
    recovery: undefined,
    started: t0,
    finished: t0,
    counter: opts.progress?.counter(dev.id),
    limit: undefined,
    plan: [],
  }));
  const signal = opts.signal;
  const note = opts.onNote ?? (() => undefined);
  await queryDevices(targets);
  const newRouter = () =>
    new ResumeRouter(
      opts.devices.map((d, i) => ({ name: d.id, idstr: opts.idstrs?.[i] ?? null })),
      opts.map ?? new Map(),
      targets.map((t) => t.limit),
      opts.maxDeviceBytes,
    );
  if (opts.preflight) await preflight(opts.preflight, newRouter(), targets, signal);
  const router = newRouter();
  // A cancel interrupts every data_fd write in flight (they reject with ECANCELED).
  const unlisten = whenCancelled(signal, () => {
    note({ type: 'cancelling', reason: abortReason(signal!) });
    for (const t of targets) if (t.dataFd && !t.dataFd.closed) io.cancel(t.dataFd.fd).catch(() => undefined);
  });
  try {
    await loadSetup(targets);
    note({ type: 'resuming', devices: targets.length });
    await loadState(targets, events, router, io, maxInFlight, signal, note);
    router.finish();
    throwIfCancelled(signal, 'restore');
  } catch (e) {
    // The stream itself is bad (truncated, corrupt, unmatched) or the restore was
    // cancelled: no device may keep half a state, so every one is reset (a SET out of
    // RESUMING would load what it was given).
    const recovery = await Promise.all(
      targets.map(async (t) => {
        await t.writes;
        await t.dataFd?.close();
        return resetDevice(t.dev);
      }),
    );
    const err = e instanceof CancelledError ? e : signal?.aborted ? new CancelledError(abortReason(signal), 'restore') : nameDevices(e, targets, router);
    if (err instanceof MigbridgeError) err.recovery = recovery;
    throw err;
  } finally {
    unlisten();
  }
  await loadCleanupAndStart(targets);
  // All or nothing: when any device failed (its writes, or its data rejected on the exit
  // from RESUMING), every destination is reset, so none runs with a state the others do
  // not match. A failed device is reset without a SET out of RESUMING, which could load
  // bytes it reported as bad (mtty keeps a header it rejected with EFAULT).
  const failed = targets.filter((x) => x.error);
  if (failed.length) {
    const why = `reset because ${failed.map((t) => t.dev.id).join(', ')} failed (a restore is all or nothing)`;
    for (const t of targets) {
      const step = await resetDevice(t.dev);
      t.recovery = `${step.action}${step.ok ? '' : ` failed: ${step.error}`}`;
      t.error ??= new MigbridgeError('ERESTORE_PEER', `device ${t.dev.id}: ${why}`, { device: t.dev.id });
    }
  }
  const report: RestoreReport = {
    devices: targets.map((t) => ({
      id: t.dev.id,
      idstr: t.idstr,
      bytes: t.bytes,
      chunks: t.chunks,
      ok: !t.error,
      ...(t.error ? { error: t.error instanceof MigbridgeError ? t.error.toJSON() : { message: t.error.message } } : {}),
      ...(t.recovery ? { recovery: t.recovery } : {}),
      ...selfCheck(t.dev),
      seconds: Math.max(0, Number(t.finished - t.started)) / 1e9,
    })),
    totalBytes: targets.reduce((s, t) => s + t.bytes, 0),
    seconds: Number(now() - t0) / 1e9,
    ok: targets.every((t) => !t.error),
  };
  opts.progress?.stop();
  if (!report.ok) {
    throw new RestoreFailedError(
      `${failed.length} of ${targets.length} devices failed to restore (every device was reset): ${failed.map((t) => t.error!.message).join('; ')}`,
      report,
    );
  }
  return report;
}

/**
 * Reads the whole stream through a router of its own before any device is touched: a
 * structural fault is refused then, naming section and offset.
 */
async function preflight(events: AsyncIterable<StreamEvent>, router: ResumeRouter, targets: Target[], signal: AbortSignal | undefined): Promise<void> {
  try {
    for await (const ev of events) {
      throwIfCancelled(signal, 'restore');
      router.route(ev);
    }
    router.finish();
  } catch (e) {
    throw e instanceof CancelledError ? e : nameDevices(e, targets, router, 'refused before any device was touched');
  }
}

/** A stream failure names the device whose section it hit (or every device), keeping offset and section. */
function nameDevices(e: unknown, targets: Target[], router: ResumeRouter, outcome = 'every device was reset to RUNNING'): unknown {
  if (!(e instanceof MigbridgeError) || e.device !== undefined) return e;
  const sectionId = e instanceof StreamError ? e.sectionId : undefined;
  const index = sectionId !== undefined ? router.deviceOf(sectionId) : undefined;
  const hit = index !== undefined ? targets[index] : undefined;
  const names = hit ? hit.dev.id : targets.map((t) => t.dev.id).join(', ');
  const idstr = hit ? (hit.idstr ?? (e instanceof StreamError ? e.idstr : undefined)) : undefined;
  return new MigbridgeError(e.code, `${e.message}; restoring device ${names}${idstr ? ` from ${idstr}` : ''}: ${outcome}`, {
    ...(e.offset !== undefined ? { offset: e.offset } : {}),
    ...(e.section !== undefined ? { section: e.section } : idstr ? { section: idstr } : {}),
    ...(e.errno !== undefined ? { errno: e.errno } : {}),
    ...(e.path !== undefined ? { path: e.path } : {}),
    device: names,
    cause: e,
  });
}

/** The simulator verifies a digest when it leaves RESUMING; kernel devices validate inside the SET itself. */
function selfCheck(dev: MigrationDevice): { verified?: boolean; verifiedAgainst?: string; sourceMismatch?: string } {
  const result = (dev as { resumeResult?: { verified: boolean; sourceSeed?: bigint; givenSeed?: bigint } }).resumeResult;
  if (!result) return {};
  if (!result.verified || result.sourceSeed === undefined) return { verified: result.verified };
  const hex = (n: bigint): string => `0x${n.toString(16)}`;
  return {
    verified: true,
    verifiedAgainst: `the state digest the stream carries, of a sim source with seed=${hex(result.sourceSeed)}`,
    ...(result.givenSeed !== undefined && result.givenSeed !== result.sourceSeed
      ? { sourceMismatch: `the stream holds the state of a seed=${hex(result.sourceSeed)} source, this device was given seed=${hex(result.givenSeed)}` }
      : {}),
  };
}

/**
 * Each destination's plan and MIG_DATA_SIZE before it resumes. The size is, for a device
 * not saving, its whole state (mtty, the simulator); a device that does not answer gets no
 * per-record limit. A device whose flags cannot be read is planned with STOP_COPY alone
 * (every migration device has it): its own SETs then say what is wrong with it.
 */
async function queryDevices(targets: Target[]): Promise<void> {
  const flags = await Promise.all(
    targets.map(async (t) => {
      const n = await t.dev.stopCopySize().catch(() => undefined);
      if (n !== undefined && n > 0n && n <= BigInt(Number.MAX_SAFE_INTEGER)) t.limit = Number(n);
      const f = await t.dev.migrationFlags().catch(() => 0);
      return f & MigFlag.STOP_COPY ? f : MigFlag.STOP_COPY;
    }),
  );
  // The P2P step is every device's or none's; STOP first on every device: the exit from
  // RESUMING is where each validates its data, and no device may run before all have accepted theirs.
  const p2p = flags.every((f) => f & MigFlag.P2P);
  targets.forEach((t, i) => (t.plan = destinationPlan(flags[i]!, { p2p, stopFirst: true })));
}

/** Issues `phase`'s SET on each target whose plan has one, in parallel; a failure is kept on its target. */
async function runPhase(targets: readonly Target[], phase: DestinationPhase): Promise<void> {
  const on = targets.filter((t) => planStep(t.plan, phase));
  const steps = on.map((t) => planStep(t.plan, phase)!);
  const results = await setStates(
    on.map((t) => t.dev),
    (d) => steps[on.findIndex((t) => t.dev === d)]!.to,
  );
  results.forEach((r, i) => {
    const t = on[i]!;
    const step = steps[i]!;
    if (!r.ok) t.error = r.error;
    else if (step.dataFd && !r.dataFd) {
      t.error = new VfioDeviceError(t.dev.id, stateName(step.to), Errno.EBADF, { message: `device entered ${stateName(step.to)} without a data_fd (was it already ${stateName(step.to)}?)` });
    } else if (r.dataFd && step.dataFd) t.dataFd = r.dataFd;
    else if (r.dataFd) void r.dataFd.close();
  });
}

/** load_setup: every device to RESUMING in parallel (a new data_fd each). */
async function loadSetup(targets: Target[]): Promise<void> {
  await runPhase(targets, 'load_setup');
  const failed = targets.find((t) => t.error);
  if (failed) throw failed.error;
  const t = now();
  for (const x of targets) x.started = t;
}

/** load_state: route each DATA_STATE chunk to its device's data_fd without waiting for other devices. */
async function loadState(
  targets: Target[],
  events: AsyncIterable<StreamEvent>,
  router: ResumeRouter,
  io: IoEngine,
  maxInFlight: number,
  signal: AbortSignal | undefined,
  note: NoteSink,
): Promise<void> {
  let inFlight = 0;
  const waiters: (() => void)[] = [];
  const it = events[Symbol.asyncIterator]();
  try {
    await routeEvents();
  } finally {
    // Closes the source (a file's fd) when we stop early; after a cancel a read may still
    // be pending, and the close then happens once it settles.
    void Promise.resolve(it.return?.()).catch(() => undefined);
  }
  await Promise.all(targets.map((t) => t.writes));

  async function routeEvents(): Promise<void> {
  for (;;) {
    // A stream that stopped arriving (a socket) must not hold a cancel up.
    const step = await untilCancelled(it.next(), signal, () => null);
    throwIfCancelled(signal, 'restore');
    if (!step || step.done) break;
    const ev = step.value;
    const index = router.route(ev, (k, idstr) => (targets[k]!.idstr = idstr));
    if (index === undefined || ev.type !== 'vfio-data-chunk') continue;
    const t = targets[index]!;
    if (t.error || ev.data.length === 0) continue;
    const data = ev.data;
    while (inFlight >= maxInFlight) await new Promise<void>((r) => waiters.push(r));
    throwIfCancelled(signal, 'restore');
    // A slice of a pool buffer (the stream read through the ring) keeps that buffer out of
    // the pool until its write completed; the source recycles the rest as it reads on (it
    // is not pulled again before this).
    const release = retainPooled(data);
    if (t.chunks === 0) note({ type: 'device-data', device: t.dev.id, section: ev.section.idstr, offset: ev.offset });
    inFlight += data.length;
    t.chunks++;
    t.writes = t.writes.then(async () => {
      try {
        if (!t.error) {
          await io.write(t.dataFd!.fd, data);
          t.bytes += data.length;
          if (t.counter) t.counter.bytes += data.length;
        }
      } catch (e) {
        // Any write error is fatal for that device (mtty returns EFAULT on a bad header yet keeps the bytes).
        t.error =
          e instanceof MigbridgeError
            ? new VfioDeviceError(t.dev.id, 'write resume data', e.errno ?? Errno.EIO, { message: `after ${t.bytes} bytes of ${t.idstr}`, cause: e })
            : (e as Error);
      } finally {
        release?.();
        inFlight -= data.length;
        waiters.shift()?.();
      }
    });
  }
  }
}

/**
 * load_cleanup + VM start: close the resume fds (QEMU does so while still RESUMING), then
 * RUNNING_P2P (when every device has P2P) and RUNNING; the exit from RESUMING is where the
 * device validates what it was given.
 */
async function loadCleanupAndStart(targets: Target[]): Promise<void> {
  await Promise.all(targets.map((t) => t.dataFd?.close()));
  const t = now();
  for (const x of targets) x.finished = t;
  const live = targets.filter((t) => !t.error);
  if (live.length === 0) return;
  // Phase by phase on every device (STOP first, see queryDevices); a failure stops the start.
  for (const phase of ['load_complete', 'vm_start_prepare', 'vm_start'] as const) {
    await runPhase(live, phase);
    if (live.some((t) => t.error)) return;
  }
  const end = now();
  for (const x of targets) x.finished = end;
}
