// A save's output, guarded: a write that makes no progress for `stallMs` (a destination
// socket that stopped reading, a hung disk) fails with a typed error instead of hanging,
// a cancelled save stops waiting on a blocked write, and the sink's own failures (ENOSPC,
// EPIPE, ...) become typed errors naming the output and the stream offset: the one place
// where a sink's failures are mapped (a file output's name the user's path, OutputFileError).
import { MigbridgeError, errnoNumber } from '../errors.js';
import { outputFileError } from '../util/atomic-file.js';
import { CancelledError, abortReason, untilCancelled } from './cancel.js';
import { type ByteSink, SinkError } from './sink.js';

/** How long abort() lets a write already in flight finish before it closes the output under it. */
const ABORT_GRACE_MS = 2000;

export interface SinkGuardOptions {
  readonly signal?: AbortSignal;
  /** A write (or the final commit) still pending after this long fails the save. */
  readonly stallMs: number;
}

function sinkFailure(sink: ByteSink, e: unknown): Error {
  if (sink.outputPath !== undefined) return outputFileError(e, sink.outputPath, 'cannot write', sink.bytesWritten());
  if (e instanceof MigbridgeError) return e;
  const code = (e as NodeJS.ErrnoException).code;
  const errno = code ? errnoNumber(code) : undefined;
  const why = code && errno !== undefined ? code : (e as Error).message;
  return new SinkError(code ?? 'EIO', `writing the stream to ${sink.description} failed at byte ${sink.bytesWritten()}: ${why}${code === 'ENOSPC' ? ' (no space left on the device)' : ''}`, {
    offset: sink.bytesWritten(),
    ...(errno !== undefined ? { errno } : {}),
    cause: e,
  });
}

export function guardSink(inner: ByteSink, opts: SinkGuardOptions): ByteSink {
  let inflight: Promise<unknown> | undefined;
  const guarded = async (what: string, op: Promise<void>, cancellable: boolean): Promise<void> => {
    inflight = op.catch(() => undefined);
    let timer: NodeJS.Timeout | undefined;
    const stalled = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new SinkError('ETIMEDOUT', `${what} ${inner.description} made no progress for ${opts.stallMs} ms at byte ${inner.bytesWritten()} (the destination stopped reading?)`, { offset: inner.bytesWritten(), errno: errnoNumber('ETIMEDOUT')! })),
        opts.stallMs,
      );
    });
    try {
      const raced = Promise.race([op.catch((e: unknown) => Promise.reject(sinkFailure(inner, e))), stalled]);
      // The abort listener lives for this write only (see untilCancelled).
      await (cancellable ? untilCancelled(raced, opts.signal, () => Promise.reject(new CancelledError(abortReason(opts.signal!), 'save'))) : raced);
    } finally {
      clearTimeout(timer);
    }
  };
  const owned = inner.writeOwned?.bind(inner);
  return {
    description: inner.description,
    write: (data) => guarded('writing the stream to', inner.write(data), true),
    // The zero-copy record path goes through the same guard (`done` stays the inner sink's to call).
    ...(owned ? { writeOwned: (bufs: Buffer[], done: () => void) => guarded('writing the stream to', owned(bufs, done), true) } : {}),
    // Not cancellable: once the commit started, the output becomes complete (or it fails).
    commit: () => guarded('completing the stream to', inner.commit(), false),
    async abort() {
      // A file write still in flight must finish before its fd is closed (the number could
      // be reused under it); a socket write blocked on a peer that stopped reading never
      // finishes, so it is cut off by the abort after the grace.
      if (inflight) {
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([inflight, new Promise<void>((r) => (timer = setTimeout(r, ABORT_GRACE_MS)))]);
        clearTimeout(timer);
      }
      await inner.abort();
    },
    bytesWritten: () => inner.bytesWritten(),
  };
}
