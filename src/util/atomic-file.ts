// Output that never looks complete when it is not: written under a temporary name in the
// destination's directory and renamed over `path` only after `fill` finished and the data
// was flushed; removed when `fill` throws.
import { createWriteStream, type WriteStream } from 'node:fs';
import { rename, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { finished } from 'node:stream/promises';

/** `.NAME.partial-PID` beside NAME: the one temporary name every output of ours uses. */
export function temporaryNameFor(path: string): string {
  return join(dirname(path), `.${basename(path)}.partial-${process.pid}`);
}

export async function writeFileAtomically<T>(path: string, fill: (out: WriteStream) => Promise<T>): Promise<T> {
  const tmp = temporaryNameFor(path);
  // A 4 MiB write queue lets the producer go on while the previous writes are in the
  // threadpool (with the 16 KiB default every large write waited for its own completion);
  // still a bound on memory.
  const out = createWriteStream(tmp, { flags: 'wx', highWaterMark: 4 << 20 });
  let ok = false;
  try {
    const result = await fill(out);
    out.end();
    await finished(out);
    await rename(tmp, path);
    ok = true;
    return result;
  } finally {
    if (!ok) {
      // Queued writes may still be in flight: their failure after destroy() is expected
      // (ERR_STREAM_DESTROYED) and must not surface as an unhandled 'error' event.
      out.on('error', () => undefined);
      const closed = new Promise<void>((resolve) => (out.closed ? resolve() : out.once('close', () => resolve())));
      out.destroy();
      await closed;
      await unlink(tmp).catch(() => undefined);
    }
  }
}
