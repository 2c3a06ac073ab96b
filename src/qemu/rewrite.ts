// Decode a stream completely and encode it again from the decoded records: byte-identical
// output for every supported stream (the codec's own round-trip check, `migbridge rewrite`).
import { stat } from 'node:fs/promises';
import { readStreamFile } from './reader.js';
import { StreamWriter, writableSink } from './writer.js';
// A libvirt save image in gives a libvirt save image out.
import { writeStreamOutput, type LibvirtOutputOptions } from '../libvirt/output.js';

/** libvirt save images: a replacement domain XML (as virsh save-image-define) and the output's format. */
export type RewriteOptions = LibvirtOutputOptions;

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
  }, opts);
  const bytes = (await stat(outPath)).size;
  return { in: inPath, out: outPath, bytes, events, seconds: (performance.now() - t0) / 1000 };
}
