// `migbridge rewrite IN OUT`: decode a stream completely and encode it again
// from the decoded records. Byte-identical output for every supported stream.
import { stat } from 'node:fs/promises';
import { readStreamFile } from '../../qemu/reader.js';
import { StreamWriter, writableSink } from '../../qemu/writer.js';
import { writeFileAtomically } from '../../util/atomic-file.js';
import type { Command } from '../command.js';

export const rewriteCommand: Command = {
  name: ['rewrite'],
  summary: 'Parse a QEMU migration stream fully and write it back from the decoded records (byte-identical).',
  usage: 'rewrite IN OUT',
  operands: ['IN', 'OUT'],
  options: {},
  async run(args, io) {
    const [inPath, outPath] = args.positionals as [string, string];
    const t0 = performance.now();
    const events = await writeFileAtomically(outPath, async (out) => {
      const w = new StreamWriter(writableSink(out));
      let n = 0;
      for await (const ev of readStreamFile(inPath)) {
        await w.event(ev);
        n++;
      }
      await w.flush();
      return n;
    });
    const bytes = (await stat(outPath)).size;
    const seconds = (performance.now() - t0) / 1000;
    io.result({ in: inPath, out: outPath, bytes, events, seconds }, () => `wrote ${outPath}: ${bytes} bytes from ${events} decoded records in ${seconds.toFixed(3)} s`);
    return 0;
  },
};
