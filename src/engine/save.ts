// Parallel multi-device save: every device's data_fd is read concurrently through the
// io engine and framed into `<idstr>` VFIO sections as QEMU 10.0 writes them without
// multifd (START: SETUP_STATE; PART: precopy DATA_STATE chunks; END: stop-copy
// DATA_STATE chunks; END_OF_STATE closing each). One function per QEMU phase
// (hw/vfio/migration.c), so the two can be read side by side.
import { InternalError, MigbridgeError } from '../errors.js';
import { MigFlag, MigState, type PlanStep, type SourcePhase, planStep, sourcePlan, stateName } from '../fsm/index.js';
import { defaultEngine, type IoEngine } from '../native/index.js';
import { StreamWriter, buildVmDesc, sendsSwitchoverStart } from '../qemu/index.js';
import { type DataFd, type MigrationDevice, VfioDeviceError, setStates } from '../vfio/device.js';
import { Errno } from '../vfio/uapi.js';
import { CancelledError, abortReason, throwIfCancelled, whenCancelled } from './cancel.js';
import { type Chunk, ChunkReader } from './chunks.js';
import type { NoteSink } from './notes.js';
import type { ProgressCounter, ProgressSink } from './progress.js';
import { recoverSources } from './recover.js';
import { type ByteSink, SinkError } from './sink.js';
import { guardSink } from './sink-guard.js';

export const DEFAULT_MACHINE_TYPE = 'pc-i440fx-10.0';
/** QEMU's VFIO_MIG_DEFAULT_DATA_BUFFER_SIZE. */
export const DEFAULT_CHUNK = 1 << 20;
/** Precopy bytes needed before their throughput is trusted for the downtime estimate. */
const MIN_RATE_SAMPLE = 4 << 20;
export const DEFAULT_READ_TIMEOUT_MS = 60_000;
/** A write to the output pending this long fails the save (a destination that stopped reading). */
export const DEFAULT_WRITE_TIMEOUT_MS = 60_000;

export interface SaveOptions {
  readonly devices: readonly MigrationDevice[];
  /** Section idstr per device (default `0000:00:<04+i>.0/vfio`, as QEMU names vfio-pci at that slot). */
  readonly idstrs?: readonly string[];
  readonly sink: ByteSink;
  /** Run a PRE_COPY phase on devices that support it. */
  readonly precopy?: boolean;
  /** Refuse to stop the devices when the estimated downtime exceeds this. */
  readonly maxDowntimeMs?: number;
  /** Leave the sources RUNNING afterwards instead of STOP. */
  readonly resumeSource?: boolean;
  readonly machineType?: string;
  /** Emit INIT_DATA_SENT when a device's initial precopy bytes are drained (QEMU 8.1+ with switchover-ack). Default true. */
  readonly initDataSent?: boolean;
  readonly io?: IoEngine;
  readonly progress?: ProgressSink;
  /** Bytes per data_fd read (default 1 MiB, at most the io engine's buffer size). */
  readonly chunkSize?: number;
  /**
   * Frame stop-copy data as PART sections interleaved across devices as it arrives, each
   * device's END then carrying only END_OF_STATE. QEMU loads this (its VFIO load handler
   * treats PART and END chunks alike) though it never writes it; it lets slow devices
   * proceed fully in parallel in bounded memory. Default false: QEMU 10.0's own framing.
   */
  readonly interleave?: boolean;
  /** A data_fd read that takes longer than this fails the save (default 60 s): a stalled device must not hang it. */
  readonly readTimeoutMs?: number;
  /** PRE_COPY rounds at most (default 32). */
  readonly maxPrecopyRounds?: number;
  /** A write to the sink that makes no progress for this long fails the save (default 60 s). */
  readonly writeTimeoutMs?: number;
  /**
   * Cancels the save: in-flight reads and writes are interrupted, every source goes back
   * to RUNNING, partial output is removed, and save() rejects with CancelledError (its
   * `recovery` says what was done). Once the stream is committed the save completes.
   */
  readonly signal?: AbortSignal;
  /** Milestones as they happen (setup, precopy rounds, stop, each device's END, commit). */
  readonly onNote?: NoteSink;
}

export interface DeviceSaveReport {
  readonly id: string;
  readonly idstr: string;
  readonly flags: number;
  readonly precopyBytes: number;
  readonly stopCopyBytes: number;
  readonly bytes: number;
  /** MIG_DATA_SIZE just before the stop. */
  readonly stopCopyEstimate: number;
  readonly seconds: number;
}

export interface SaveReport {
  readonly devices: DeviceSaveReport[];
  readonly totalBytes: number;
  readonly streamBytes: number;
  readonly seconds: number;
  readonly precopyRounds: number;
  readonly downtime: { readonly estimateMs: number; readonly actualMs: number; readonly rateBasis: string };
  readonly p2p: boolean;
}

/** A save refused before any device was stopped (e.g. --max-downtime). */
export class SaveRefusedError extends MigbridgeError {}

interface DeviceCtx {
  readonly dev: MigrationDevice;
  readonly idstr: string;
  readonly sectionId: number;
  flags: number;
  /** The SETs this device takes, phase by phase (set once the flags are known). */
  plan: PlanStep<SourcePhase>[];
  dataFd: DataFd | null;
  precopyBytes: number;
  stopCopyBytes: number;
  stopCopyEstimate: number;
  initialDrained: boolean;
  started: bigint;
  finished: bigint;
  counter: ProgressCounter | undefined;
}

export function defaultIdstr(index: number): string {
  return `0000:00:${(4 + index).toString(16).padStart(2, '0')}.0/vfio`;
}

const now = () => process.hrtime.bigint();
const msBetween = (a: bigint, b: bigint) => Number(b - a) / 1e6;

function wrapDeviceError(ctx: DeviceCtx, op: string, e: unknown): Error {
  if (e instanceof VfioDeviceError) return e;
  if (e instanceof MigbridgeError) {
    return new VfioDeviceError(ctx.dev.id, op, e.errno ?? Errno.EIO, { message: e.message, cause: e });
  }
  return e instanceof Error ? e : new InternalError(`a non-Error was thrown: ${String(e)}`);
}

/**
 * Issues `phase`'s SET (from each device's plan) on every device that has one, in
 * parallel, and keeps the data_fd a step opens; throws the first failure once all settled.
 * Returns the devices that took a step.
 */
async function runPhase(ctxs: readonly DeviceCtx[], phase: SourcePhase): Promise<DeviceCtx[]> {
  const on = ctxs.filter((c) => planStep(c.plan, phase));
  const steps = on.map((c) => planStep(c.plan, phase)!);
  const results = await setStates(
    on.map((c) => c.dev),
    (d) => steps[on.findIndex((c) => c.dev === d)]!.to,
  );
  let failed: Error | undefined;
  results.forEach((r, i) => {
    const c = on[i]!;
    const step = steps[i]!;
    if (!r.ok) failed ??= r.error;
    else if (r.dataFd && (!step.dataFd || c.dataFd)) {
      // A new session while one is open: QEMU calls this "data_fd out of sync".
      void r.dataFd.close();
    } else if (r.dataFd) c.dataFd = r.dataFd;
    else if (step.dataFd) {
      failed ??= new VfioDeviceError(c.dev.id, stateName(step.to), Errno.EBADF, { message: `device entered ${stateName(step.to)} without a data_fd` });
    }
  });
  if (failed) throw failed;
  return on;
}

export async function save(opts: SaveOptions): Promise<SaveReport> {
  const io = opts.io ?? defaultEngine();
  const chunk = Math.min(opts.chunkSize ?? DEFAULT_CHUNK, io.info().bufferSize);
  const t0 = now();
  if (opts.devices.length === 0) throw new MigbridgeError('EUSAGE', 'save needs at least one device');
  const ctxs: DeviceCtx[] = opts.devices.map((dev, i) => ({
    dev,
    idstr: opts.idstrs?.[i] ?? defaultIdstr(i),
    // Section ids from 1: QEMU's loader finds a PART/END section's handler by the id its
    // START gave it, and every handler not in the stream keeps id 0 (the first of them,
    // "timer", would take a section 0's END: "error while loading state section id 0(timer)").
    sectionId: i + 1,
    flags: 0,
    plan: [],
    dataFd: null,
    precopyBytes: 0,
    stopCopyBytes: 0,
    stopCopyEstimate: 0,
    initialDrained: false,
    started: t0,
    finished: t0,
    counter: undefined,
  }));
  const signal = opts.signal;
  const note = opts.onNote ?? (() => undefined);
  const machineType = machineTypeOf(opts);
  const sink = guardSink(opts.sink, { ...(signal ? { signal } : {}), stallMs: opts.writeTimeoutMs ?? DEFAULT_WRITE_TIMEOUT_MS });
  const w = new StreamWriter(sink);
  // A cancel interrupts every data_fd read in flight (they reject with ECANCELED).
  const unlisten = whenCancelled(signal, () => {
    note({ type: 'cancelling', reason: abortReason(signal!) });
    for (const c of ctxs) if (c.dataFd && !c.dataFd.closed) io.cancel(c.dataFd.fd).catch(() => undefined);
  });
  let precopyRounds = 0;
  let precopyRate = 0;
  try {
    await saveSetup(ctxs, w, opts);
    note({ type: 'setup', devices: ctxs.length, streamBytes: w.offset });
    throwIfCancelled(signal, 'save');
    if (opts.precopy) {
      const r = await savePrecopy(ctxs, w, io, chunk, opts);
      precopyRounds = r.rounds;
      precopyRate = r.rate;
    }
    throwIfCancelled(signal, 'save');
    const estimate = await estimateDowntime(ctxs, precopyRate);
    if (opts.maxDowntimeMs !== undefined && estimate.ms > opts.maxDowntimeMs) {
      throw new SaveRefusedError(
        'EDOWNTIME',
        `refusing to stop: estimated downtime ${estimate.ms.toFixed(1)} ms for ${estimate.bytes} stop-copy bytes at ${estimate.basis} exceeds --max-downtime ${opts.maxDowntimeMs} ms; devices left RUNNING`,
      );
    }
    throwIfCancelled(signal, 'save');
    note({ type: 'stopping', estimateMs: estimate.ms });
    const stopAt = now();
    const p2p = await saveStop(ctxs);
    throwIfCancelled(signal, 'save');
    note({ type: 'stopped', streamBytes: w.offset });
    // QEMU 10 announces the switchover here, between the stop and the END sections, for
    // 10.0+ machine types: with it a reader knows which chunks are stop-copy data.
    if (sendsSwitchoverStart(machineType)) await w.switchoverStart();
    await saveCompletePrecopy(ctxs, w, io, chunk, opts);
    const stopEnd = now();
    await w.eof();
    await w.vmdesc(buildVmDesc([]));
    await w.flush();
    // The last moment a cancel can take effect: past the commit the output is complete.
    throwIfCancelled(signal, 'save');
    // Every byte is read and verified: make the output visible, then settle the sources.
    await sink.commit();
    note({ type: 'committed', streamBytes: w.offset });
    await saveCleanup(ctxs);
    const seconds = msBetween(t0, now()) / 1000;
    const devices = ctxs.map((c) => ({
      id: c.dev.id,
      idstr: c.idstr,
      flags: c.flags,
      precopyBytes: c.precopyBytes,
      stopCopyBytes: c.stopCopyBytes,
      bytes: c.precopyBytes + c.stopCopyBytes,
      stopCopyEstimate: c.stopCopyEstimate,
      seconds: msBetween(c.started, c.finished) / 1000,
    }));
    return {
      devices,
      totalBytes: devices.reduce((s, d) => s + d.bytes, 0),
      streamBytes: w.offset,
      seconds,
      precopyRounds,
      downtime: { estimateMs: estimate.ms, actualMs: msBetween(stopAt, stopEnd), rateBasis: estimate.basis },
      p2p,
    };
  } catch (e) {
    await Promise.all(ctxs.map((c) => c.dataFd?.close()));
    // Sources must never stay stopped because of us: back to RUNNING (reset out of ERROR),
    // while the partial output is removed.
    const [recovery] = await Promise.all([recoverSources(ctxs.map((c) => c.dev)), sink.abort().catch(() => undefined)]);
    const err = failureOf(e, signal);
    err.recovery = recovery;
    throw err;
  } finally {
    unlisten();
    opts.progress?.stop();
  }
}

/**
 * The error a failed save rejects with: CancelledError once the signal fired (whatever
 * the interrupted step threw, e.g. ECANCELED from a read), else the failure itself, typed.
 */
function failureOf(e: unknown, signal: AbortSignal | undefined): MigbridgeError {
  if (signal?.aborted && !(e instanceof CancelledError)) return new CancelledError(abortReason(signal), 'save');
  if (e instanceof MigbridgeError) return e;
  return new SinkError('EIO', e instanceof Error ? e.message : String(e), { cause: e });
}

function machineTypeOf(opts: SaveOptions): string {
  return opts.machineType ?? DEFAULT_MACHINE_TYPE;
}

/** save_setup: capabilities, MIG_DATA_SIZE, header, configuration, START sections. */
async function saveSetup(ctxs: DeviceCtx[], w: StreamWriter, opts: SaveOptions): Promise<void> {
  await Promise.all(
    ctxs.map(async (c) => {
      try {
        c.flags = await c.dev.migrationFlags();
        c.stopCopyEstimate = Number(await c.dev.stopCopySize());
      } catch (e) {
        throw wrapDeviceError(c, 'query migration capabilities', e);
      }
      if (!(c.flags & MigFlag.STOP_COPY)) {
        throw new VfioDeviceError(c.dev.id, 'migration flags', Errno.EINVAL, { message: `flags 0x${c.flags.toString(16)} lack STOP_COPY` });
      }
      c.counter = opts.progress?.counter(c.dev.id, c.stopCopyEstimate);
    }),
  );
  // The P2P step is every device's or none's (QEMU needs P2P on all VFIO devices of a VM).
  const p2p = ctxs.every((c) => c.flags & MigFlag.P2P);
  for (const c of ctxs) c.plan = sourcePlan(c.flags, { precopy: opts.precopy ?? false, p2p, resume: opts.resumeSource ?? false });
  await w.header();
  await w.configuration(machineTypeOf(opts));
  for (const c of ctxs) await w.vfioStartSection(c.sectionId, c.idstr);
}

/**
 * save_live_iterate: devices with PRE_COPY go to PRE_COPY and their precopy data is read
 * in rounds while they run, guided by PRECOPY_INFO, until every device's initial bytes
 * are drained and the dirty bytes stop shrinking (or the round limit).
 */
async function savePrecopy(
  ctxs: DeviceCtx[],
  w: StreamWriter,
  io: IoEngine,
  chunk: number,
  opts: SaveOptions,
): Promise<{ rounds: number; rate: number }> {
  const pre = await runPhase(ctxs, 'save_setup');
  if (pre.length === 0) return { rounds: 0, rate: 0 };
  opts.onNote?.({ type: 'precopy', devices: pre.length });
  const maxRounds = opts.maxPrecopyRounds ?? 32;
  const sendInit = opts.initDataSent ?? true;
  const t0 = now();
  let moved = 0;
  let lastDirty = Number.POSITIVE_INFINITY;
  let rounds = 0;
  while (rounds < maxRounds) {
    throwIfCancelled(opts.signal, 'save');
    rounds++;
    const wants = await Promise.all(
      pre.map(async (c) => {
        try {
          const info = await c.dev.precopyInfo();
          return Number(info.initialBytes + info.dirtyBytes);
        } catch (e) {
          throw wrapDeviceError(c, 'precopy info', e);
        }
      }),
    );
    // Every device's pending precopy data is read concurrently through the same bounded
    // pool as stop-copy and leaves as PART sections as it arrives (a round never sits in
    // memory); the section that drains a device's initial bytes carries INIT_DATA_SENT.
    let dirtyTotal = 0;
    let initialTotal = 0;
    let roundBytes = 0;
    const readers = pre.map(
      (c, i) =>
        new ChunkReader(io, c.dataFd!.fd, {
          chunkSize: chunk,
          quota: poolShare(io, pre.length),
          timeoutMs: opts.readTimeoutMs ?? DEFAULT_READ_TIMEOUT_MS,
          limit: wants[i]!,
          enomsgIsEnd: true,
          onError: (e) => wrapDeviceError(c, 'precopy read', e),
          onRead: (n) => countRead(c, n),
        }),
    );
    readers.forEach((r) => r.start());
    try {
      await writeInterleaved(
        pre,
        readers,
        w,
        async (c, reader) => {
        let after;
        try {
          after = await c.dev.precopyInfo();
        } catch (e) {
          throw wrapDeviceError(c, 'precopy info', e);
        }
        const initial = Number(after.initialBytes);
        dirtyTotal += Number(after.dirtyBytes);
        initialTotal += initial;
        moved += reader.bytesRead;
        roundBytes += reader.bytesRead;
        c.precopyBytes += reader.bytesRead;
        if (initial === 0 && !c.initialDrained) {
          c.initialDrained = true;
          await w.sectionPart(c.sectionId);
          await w.vfioMarker(sendInit ? 'DEV_INIT_DATA_SENT' : 'END_OF_STATE');
          await w.endSection();
        }
      },
      'precopy',
      );
    } finally {
      readers.forEach((r) => r.stop());
    }
    opts.onNote?.({ type: 'precopy-round', round: rounds, bytes: roundBytes, streamBytes: w.offset });
    // Converged: nothing initial left, and dirty data no longer shrinks (or is gone).
    if (initialTotal === 0 && (dirtyTotal === 0 || dirtyTotal >= lastDirty)) break;
    lastDirty = dirtyTotal;
  }
  const secs = msBetween(t0, now()) / 1000;
  // A few header bytes say nothing about throughput: measure only on a real amount of data.
  return { rounds, rate: secs > 0 && moved >= MIN_RATE_SAMPLE ? moved / secs : 0 };
}

async function estimateDowntime(ctxs: DeviceCtx[], measuredRate: number): Promise<{ ms: number; bytes: number; basis: string }> {
  const sizes = await Promise.all(
    ctxs.map(async (c) => {
      try {
        c.stopCopyEstimate = Number(await c.dev.stopCopySize());
      } catch (e) {
        throw wrapDeviceError(c, 'MIG_DATA_SIZE', e);
      }
      return c.stopCopyEstimate;
    }),
  );
  const bytes = sizes.reduce((s, n) => s + n, 0);
  // All devices drain into one stream: the aggregate rate bounds the stop-copy time.
  if (measuredRate > 0) {
    return { ms: (bytes / measuredRate) * 1000, bytes, basis: `${(measuredRate / 2 ** 20).toFixed(0)} MiB/s measured in PRE_COPY` };
  }
  // Nothing measured yet: assume ~1 GiB/s (QEMU reads a data_fd serially in 1 MiB chunks at roughly that rate, docs/vfio-migration.md §9); a hint, reported as such.
  const assumed = 2 ** 30;
  return { ms: (bytes / assumed) * 1000, bytes, basis: '1024 MiB/s assumed (no PRE_COPY measurement)' };
}

/**
 * VM stop: with P2P on every device, all go to RUNNING_P2P / PRE_COPY_P2P before any goes
 * further (QEMU's prepare callback, for multi-device consistency); then all stop (a device
 * in precopy straight to STOP_COPY, one without to STOP, then STOP_COPY for its data_fd),
 * in parallel. Returns whether the P2P step ran.
 */
async function saveStop(ctxs: DeviceCtx[]): Promise<boolean> {
  const p2p = (await runPhase(ctxs, 'vm_stop_prepare')).length > 0;
  await runPhase(ctxs, 'vm_stop');
  await runPhase(ctxs, 'save_complete_precopy');
  const t = now();
  for (const c of ctxs) c.started = t;
  return p2p;
}

/**
 * save_live_complete_precopy: every device's data_fd is read concurrently into the io
 * engine's buffer pool, which bounds memory; QEMU framing writes each device's END section
 * whole, the device with the most data ready first, while the others read ahead within
 * their share of the pool (so they stall once it is full: bounded, not fully parallel);
 * interleaved framing writes whatever is ready as PART sections (parallel and bounded).
 */
async function saveCompletePrecopy(ctxs: DeviceCtx[], w: StreamWriter, io: IoEngine, chunk: number, opts: SaveOptions): Promise<void> {
  const readers = ctxs.map(
    (c) =>
      new ChunkReader(io, c.dataFd!.fd, {
        chunkSize: chunk,
        // Interleaved: every reader drains, one buffer each at least. QEMU framing: a share
        // of the pool that may be 0 (more devices than buffers), so that the device being
        // written can never wait for a buffer held by one that is not.
        quota: opts.interleave ? poolShare(io, ctxs.length) : Math.floor(io.info().bufferCount / ctxs.length),
        timeoutMs: opts.readTimeoutMs ?? DEFAULT_READ_TIMEOUT_MS,
        onError: (e) => wrapDeviceError(c, `read stop-copy data (state ${stateName(MigState.STOP_COPY)})`, e),
        onRead: (n) => countRead(c, n),
      }),
  );
  readers.forEach((r) => r.start());
  try {
    if (opts.interleave) {
      return await writeInterleaved(ctxs, readers, w, async (c) => {
        await deviceDone(c);
        await w.sectionEnd(c.sectionId);
        await w.vfioMarker('END_OF_STATE');
        await w.endSection();
      });
    }
    const remaining = ctxs.map((_, i) => i);
    while (remaining.length) {
      // Pick the device that is done (or has the most buffered) so the sink never idles on a slow one.
      let pick = remaining[0]!;
      for (const i of remaining) if (readers[i]!.score() > readers[pick]!.score()) pick = i;
      const waitable = remaining.filter((i) => readers[i]!.quotaNow > 0);
      if (readers[pick]!.score() === 0 && waitable.length) {
        await Promise.race(waitable.map((i) => readers[i]!.ready()));
        continue;
      }
      remaining.splice(remaining.indexOf(pick), 1);
      // The device being written gets at least half the pool (its reads and the sink's writes
      // in flight), the others share the rest for read-ahead. Quotas always sum to the pool,
      // so a buffer the written device needs is never held by a reader over its quota for
      // good: what the others hold beyond a smaller new share was within the old one.
      const pool = io.info().bufferCount;
      const share = Math.floor(pool / 2 / Math.max(1, remaining.length));
      for (const i of remaining) readers[i]!.setQuota(share);
      readers[pick]!.setQuota(pool - share * remaining.length);
      const c = ctxs[pick]!;
      const reader = readers[pick]!;
      throwIfCancelled(opts.signal, 'save');
      await w.sectionEnd(c.sectionId);
      for (let piece = await reader.next(); piece; piece = await reader.next()) await writeChunk(c, w, piece);
      await deviceDone(c);
      await w.vfioMarker('END_OF_STATE');
      await w.endSection();
      opts.onNote?.({ type: 'device-saved', device: c.dev.id, bytes: c.precopyBytes + c.stopCopyBytes, streamBytes: w.offset });
    }
  } finally {
    readers.forEach((r) => r.stop());
  }
}

/** Pool buffers per reader when `readers` share the engine's pool evenly (at least 1: interleaved readers all drain). */
function poolShare(io: IoEngine, readers: number): number {
  return Math.max(1, Math.floor(io.info().bufferCount / Math.max(1, readers)));
}

/** One chunk as a DATA_STATE record; its pool buffer goes back once the sink wrote it. */
async function writeChunk(c: DeviceCtx, w: StreamWriter, piece: Chunk, phase: 'precopy' | 'stop-copy' = 'stop-copy'): Promise<void> {
  const n = piece.data.length;
  await w.vfioDataOwned(piece.data, () => piece.release());
  if (phase === 'stop-copy') c.stopCopyBytes += n;
  if (c.counter) c.counter.bytes += n;
}

/** Progress: bytes that came off the device's data_fd (they may still wait for their turn in the stream). */
function countRead(c: DeviceCtx, n: number): void {
  if (c.counter) c.counter.read = (c.counter.read ?? 0) + n;
}

/** After read() returned 0: the device must confirm it delivered its whole state. */
async function deviceDone(c: DeviceCtx): Promise<void> {
  try {
    await c.dataFd!.verifyEnd();
  } catch (e) {
    throw wrapDeviceError(c, 'end of stop-copy data', e);
  }
  c.finished = now();
  if (c.counter) c.counter.done = true;
}

/**
 * Interleaved framing: whatever any device has ready goes out as one PART section (closed
 * by END_OF_STATE); `close` runs once per device when its reader is finished.
 */
async function writeInterleaved(
  ctxs: DeviceCtx[],
  readers: ChunkReader[],
  w: StreamWriter,
  close: (c: DeviceCtx, reader: ChunkReader) => Promise<void>,
  phase: 'precopy' | 'stop-copy' = 'stop-copy',
): Promise<void> {
  const open = new Set(ctxs.map((_, i) => i));
  while (open.size) {
    let wrote = false;
    for (const i of [...open]) {
      const c = ctxs[i]!;
      const reader = readers[i]!;
      const ready = reader.takeReady();
      if (ready.length) {
        await w.sectionPart(c.sectionId);
        for (const piece of ready) await writeChunk(c, w, piece, phase);
        await w.vfioMarker('END_OF_STATE');
        await w.endSection();
        wrote = true;
      }
      if (reader.finished()) {
        await close(c, reader);
        open.delete(i);
        wrote = true;
      }
    }
    if (!wrote && open.size) await Promise.race([...open].map((i) => readers[i]!.ready()));
  }
}

/** save_cleanup: STOP_COPY -> STOP (or RUNNING with --resume-source), data_fds closed. */
async function saveCleanup(ctxs: DeviceCtx[]): Promise<void> {
  await Promise.all(ctxs.map((c) => c.dataFd?.close()));
  await runPhase(ctxs, 'save_cleanup');
}
