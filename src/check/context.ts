// What every group gets: the probes (one per device, the second is the resume
// destination), the result sink, a per-device cache of one STOP_COPY stream (so each
// group does not capture its own) and the interruption check.
import { MigbridgeError } from '../errors.js';
import type { MigrationDevice } from '../vfio/device.js';
import type { Probe, StreamOutcome } from './probe.js';
import type { CheckGroup, CheckResult, CheckStatus, Evidence } from './types.js';

/** Raised between items once the run's AbortSignal fired (Ctrl-C). */
export class CheckInterruptedError extends MigbridgeError {
  constructor(reason: string) {
    super('EINTR', `check interrupted (${reason}); the devices it touched were reset`);
  }
}

export class CheckContext {
  readonly #streams = new Map<Probe, StreamOutcome>();

  constructor(
    readonly probes: Probe[],
    readonly destructive: boolean,
    readonly timingRepeats: number,
    readonly emit: (r: CheckResult) => void,
    readonly signal: AbortSignal | undefined,
    /** Closes a device and opens its spec again (the state a next user finds); undefined for simulated devices, which do not outlive their handle. */
    readonly reopen: (p: Probe) => Promise<MigrationDevice | undefined>,
  ) {}

  checkInterrupted(): void {
    if (this.signal?.aborted) throw new CheckInterruptedError(String(this.signal.reason ?? 'aborted'));
  }

  result(group: CheckGroup, p: Probe, item: string, status: CheckStatus, expected: string, observed: string, evidence: Omit<Evidence, 'device'> = {}): void {
    this.checkInterrupted();
    this.emit({ group, item, status, expected, observed, evidence: { device: p.id, ...evidence } });
  }

  /** This device's STOP_COPY stream, captured once per run (the device is reset around it). */
  async stream(p: Probe): Promise<StreamOutcome> {
    let s = this.#streams.get(p);
    if (!s) {
      s = await p.capture();
      this.#streams.set(p, s);
    }
    return s;
  }
}

/** Text an n/a result gives when a needed stream is missing. */
export function noStream(s: StreamOutcome & { ok: false }): string {
  return `no complete STOP_COPY stream to work with: ${s.reason} (see data_fd: stop-copy stream read to EOF)`;
}
