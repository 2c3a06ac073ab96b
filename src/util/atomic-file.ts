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
  const out = createWriteStream(tmp, { flags: 'wx' });
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
      out.destroy();
      await unlink(tmp).catch(() => undefined);
    }
  }
}
