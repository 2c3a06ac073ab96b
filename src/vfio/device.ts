// The one device interface both backends (kernel VFIO, simulator) implement, the typed
// error a failed transition raises, and the helper that changes the state of many
// devices at once.
import { dataFdErrnoMeaning, errnoName } from '../errno.js';
import { MigbridgeError } from '../errors.js';
import { MigState, stateName } from '../fsm/index.js';

export type DeviceKind = 'kernel' | 'sim';

/**
 * A migration data session fd returned by a SET whose last arc opens one (docs/vfio-migration.md
 * §4). Save: read `fd` until read() returns 0 in STOP_COPY (in PRE_COPY* a 0 is only a
 * temporary end). Resume: write every byte to `fd`. The caller owns the fd and must
 * close() it; closing before the session ends is allowed (QEMU does it on resume).
 */
export interface DataFd {
  readonly fd: number;
  readonly direction: 'save' | 'resume';
  /** The device this session belongs to (for error messages). */
  readonly device: string;
  /**
   * Call after read() returned 0 in STOP_COPY: resolves if the device delivered its
   * whole state, throws VfioDeviceError when it failed while producing it (e.g. the
   * kernel device went to ERROR, or the simulator's injected EIO). A pipe cannot make
   * read() fail, so the simulator reports read faults here; the engine must call it.
   */
  verifyEnd(): Promise<void>;
  /** Closes the fd (idempotent). */
  close(): Promise<void>;
  readonly closed: boolean;
}

export interface PrecopyInfo {
  /** Initial precopy bytes not yet read. */
  initialBytes: bigint;
  /** Bytes the device has changed since they were last read. */
  dirtyBytes: bigint;
}

export interface RegionInfoSummary {
  index: number;
  size: number;
  readable: boolean;
  writable: boolean;
}

export interface MigrationDevice {
  readonly id: string;
  readonly kind: DeviceKind;
  /** VFIO_MIGRATION_* bits (GET VFIO_DEVICE_FEATURE_MIGRATION); ENOTTY when unsupported. */
  migrationFlags(): Promise<number>;
  /** GET MIG_DEVICE_STATE. */
  state(): Promise<MigState>;
  /**
   * GET MIG_DEVICE_STATE with the data_fd field as it came back (the uAPI: always -1 on a
   * GET; `migbridge check` verifies it). Backends that do not issue the ioctl leave it out.
   */
  stateAnswer?(): Promise<{ state: number; dataFd: number }>;
  /**
   * SET MIG_DEVICE_STATE: the device walks the whole combination path. Resolves with the
   * new data_fd when the last arc opens a session, else null. On failure it re-reads the
   * actual state (the kernel may stop anywhere on the path, or in ERROR) and throws
   * VfioDeviceError { device, errno, requested, state }.
   */
  setState(target: MigState): Promise<DataFd | null>;
  /** VFIO_MIG_GET_PRECOPY_INFO on the current saving data_fd; EINVAL outside PRE_COPY*. */
  precopyInfo(): Promise<PrecopyInfo>;
  /** GET MIG_DATA_SIZE: estimated bytes a STOP_COPY would produce now. */
  stopCopySize(): Promise<bigint>;
  /** VFIO_DEVICE_RESET: back to RUNNING, every data session ends. */
  reset(): Promise<void>;
  /** Region layout (for tests and tools). */
  regionInfo(index: number): Promise<RegionInfoSummary>;
  regionRead(index: number, offset: number, length: number): Promise<Buffer>;
  regionWrite(index: number, offset: number, data: Buffer): Promise<void>;
  /** Closes the device (data sessions end; their fds stay open until their owners close them). */
  close(): Promise<void>;
}

/** A failed device operation: errno from the device, the state requested and the state it is actually in. */
export class VfioDeviceError extends MigbridgeError {
  readonly requested?: MigState;
  /** Actual state after the failure, when it could be read. */
  readonly state?: MigState;
  readonly op: string;
  constructor(
    device: string,
    op: string,
    errno: number,
    details: { requested?: MigState; state?: MigState; message?: string; cause?: unknown } = {},
  ) {
    const name = errnoName(errno);
    const what =
      details.requested !== undefined
        ? `set state ${stateName(details.requested)}${details.state !== undefined ? ` (device now in ${stateName(details.state)})` : ''}`
        : op;
    // On a data_fd, ENOMSG, ENODEV and EIO say where the session stands: said in words.
    const meaning = /^(read|write)\b/.test(op) ? dataFdErrnoMeaning(errno) : undefined;
    super(name, `device ${device}: ${what} failed: ${name} (errno ${errno}${meaning ? `: ${meaning}` : ''})${details.message ? `: ${details.message}` : ''}`, {
      errno,
      device,
      cause: details.cause,
    });
    this.op = op;
    if (details.requested !== undefined) this.requested = details.requested;
    if (details.state !== undefined) this.state = details.state;
  }

  override toJSON(): Record<string, unknown> {
    const out = super.toJSON();
    out.op = this.op;
    if (this.requested !== undefined) out.requested = stateName(this.requested);
    if (this.state !== undefined) out.state = stateName(this.state);
    return out;
  }
}

export type SetStateResult =
  | { readonly device: MigrationDevice; readonly ok: true; readonly dataFd: DataFd | null }
  | { readonly device: MigrationDevice; readonly ok: false; readonly error: VfioDeviceError | Error };

/**
 * Sets `target` on every device at once and waits for all of them (never stops early:
 * every device's outcome is reported). Kernel devices issue their SET ioctls on the
 * native ioctl worker pool, so a slow arc on one device does not hold up the others;
 * simulated devices run their arcs concurrently on timers.
 */
export async function setStates(devices: readonly MigrationDevice[], target: MigState | ((d: MigrationDevice) => MigState)): Promise<SetStateResult[]> {
  const settled = await Promise.allSettled(devices.map((d) => d.setState(typeof target === 'function' ? target(d) : target)));
  return settled.map((s, i) =>
    s.status === 'fulfilled'
      ? { device: devices[i]!, ok: true as const, dataFd: s.value }
      : { device: devices[i]!, ok: false as const, error: s.reason instanceof Error ? s.reason : new Error(String(s.reason)) },
  );
}

/** Like setStates but throws the first failure (after all devices settled), closing any data_fd the others opened. */
export async function setStatesOrThrow(devices: readonly MigrationDevice[], target: MigState | ((d: MigrationDevice) => MigState)): Promise<(DataFd | null)[]> {
  const results = await setStates(devices, target);
  const failed = results.find((r) => !r.ok);
  if (failed && !failed.ok) {
    await Promise.all(results.map((r) => (r.ok && r.dataFd ? r.dataFd.close() : undefined)));
    throw failed.error;
  }
  return results.map((r) => (r.ok ? r.dataFd : null));
}
