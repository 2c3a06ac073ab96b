// Decode a stream completely and encode it again from the decoded records: byte-identical
// output for every supported stream (the codec's own round-trip check, `migbridge rewrite`).
import { readFile, stat } from 'node:fs/promises';
import { readStreamFile } from './reader.js';
import { StreamWriter, writableSink } from './writer.js';
// A libvirt save image in gives a libvirt save image out.
import { writeStreamOutput } from '../libvirt/output.js';

export interface RewriteOptions {
  /** libvirt save images: a file whose domain XML replaces the image's (as virsh save-image-define). */
  readonly xmlFile?: string;
}

export interface RewriteResult {
  in: string;
  out: string;
  /** Bytes of the output. */
  bytes: number;
  /** Events decoded and encoded again. */
  events: number;
  seconds: number;
}

/** Writes `outPath` (atomically) from the decoded events of `inPath`. */
export async function rewriteStreamFile(inPath: string, outPath: string, opts: RewriteOptions = {}): Promise<RewriteResult> {
  const xml = opts.xmlFile !== undefined ? await readFile(opts.xmlFile, 'utf8') : undefined;
  const t0 = performance.now();
  const events = await writeStreamOutput(inPath, outPath, async (out) => {
    const w = new StreamWriter(writableSink(out));
    let n = 0;
    for await (const ev of readStreamFile(inPath)) {
      await w.event(ev);
      n++;
    }
    await w.flush();
    return n;
  }, xml !== undefined ? { xml } : {});
  const bytes = (await stat(outPath)).size;
  return { in: inPath, out: outPath, bytes, events, seconds: (performance.now() - t0) / 1000 };
}
