// Cancellation of a save or restore: the caller (the CLI's signal handlers, or a library
// user) aborts an AbortSignal; the engine stops at its next step, interrupts the I/O it
// is waiting on, brings every device back (sources RUNNING, destinations reset), removes
// partial output and rejects with CancelledError. Nothing here exits the process.
import { MigbridgeError } from '../errors.js';

/** The operation was cancelled through its AbortSignal; `reason` says why (e.g. "SIGINT"). */
export class CancelledError extends MigbridgeError {
  constructor(
    readonly reason: string,
    what: string,
  ) {
    super('ECANCELLED', `${what} cancelled (${reason})`);
  }
}

/** Why a signal was aborted, as text (the CLI aborts with the signal's name). */
export function abortReason(signal: AbortSignal): string {
  const r: unknown = signal.reason;
  if (typeof r === 'string') return r;
  if (r instanceof Error && r.name !== 'AbortError') return r.message;
  return 'aborted';
}

/** Throws CancelledError when `signal` is aborted: called between the steps of an operation. */
export function throwIfCancelled(signal: AbortSignal | undefined, what: string): void {
  if (signal?.aborted) throw new CancelledError(abortReason(signal), what);
}

/**
 * Runs `onAbort` once if `signal` aborts (at once if it already has); returns a function
 * that unregisters it (call it when the operation ends, so a long-lived signal does not
 * keep the operation's state alive).
 */
export function whenCancelled(signal: AbortSignal | undefined, onAbort: () => void): () => void {
  if (!signal) return () => undefined;
  if (signal.aborted) {
    onAbort();
    return () => undefined;
  }
  signal.addEventListener('abort', onAbort, { once: true });
  return () => signal.removeEventListener('abort', onAbort);
}

/**
 * `op`, or `onCancel()` once `signal` aborts first. The abort listener lives only as long as
 * this one wait: racing every step against one long-lived "cancelled" promise would attach a
 * reaction per step that holds the step's result until the operation ends (a restore of a
 * 1 GiB stream kept every payload, 1.2 GB of RSS).
 */
export function untilCancelled<T, C>(op: Promise<T>, signal: AbortSignal | undefined, onCancel: () => C): Promise<T | C> {
  if (!signal) return op;
  return new Promise<T | C>((resolve, reject) => {
    const unlisten = whenCancelled(signal, () => resolve(onCancel()));
    op.then(
      (v) => {
        unlisten();
        resolve(v);
      },
      (e: unknown) => {
        unlisten();
        reject(e);
      },
    );
  });
}

