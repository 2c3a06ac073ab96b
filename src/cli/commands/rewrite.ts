// `migbridge rewrite IN OUT`: decode a stream completely and encode it again
// from the decoded records. Byte-identical output for every supported stream.
import { rename, unlink, stat } from 'node:fs/promises';
import { createWriteStream } from 'node:fs';
import { finished } from 'node:stream/promises';
import { dirname, basename, join } from 'node:path';
import { UsageError } from '../../errors.js';
import { readStreamFile } from '../../qemu/reader.js';
import { StreamWriter, writableSink } from '../../qemu/writer.js';
import type { Command } from '../command.js';

export const rewriteCommand: Command = {
  name: ['rewrite'],
  summary: 'Parse a QEMU migration stream fully and write it back from the decoded records (byte-identical).',
  usage: 'rewrite IN OUT',
  options: {},
  async run(args, io) {
    const [inPath, outPath, ...extra] = args.positionals;
    if (!inPath || !outPath || extra.length) throw new UsageError('rewrite takes IN and OUT');
    const t0 = performance.now();
    const tmp = join(dirname(outPath), `.${basename(outPath)}.tmp-${process.pid}`);
    const out = createWriteStream(tmp);
    const w = new StreamWriter(writableSink(out));
    let events = 0;
    let ok = false;
    try {
      for await (const ev of readStreamFile(inPath)) {
        await w.event(ev);
        events++;
      }
      await w.flush();
      out.end();
      await finished(out);
      await rename(tmp, outPath);
      ok = true;
    } finally {
      if (!ok) {
        out.destroy();
        await unlink(tmp).catch(() => undefined);
      }
    }
    const bytes = (await stat(outPath)).size;
    const seconds = (performance.now() - t0) / 1000;
    io.result({ in: inPath, out: outPath, bytes, events, seconds }, () => `wrote ${outPath}: ${bytes} bytes from ${events} decoded records in ${seconds.toFixed(3)} s`);
    return 0;
  },
};
