// `migbridge rewrite IN OUT`: decode a stream completely and encode it again
// from the decoded records. Byte-identical output for every supported stream.
import { stat } from 'node:fs/promises';
import { readStreamFile } from '../../qemu/reader.js';
import { StreamWriter, writableSink } from '../../qemu/writer.js';
// A libvirt save image in gives a libvirt save image out.
import { writeStreamOutput } from '../../libvirt/output.js';
import type { Command } from '../command.js';
import { libvirtOutputArgs, STREAM_OUTPUT_FORMATS } from './libvirt-output-args.js';

export const rewriteCommand: Command = {
  name: ['rewrite'],
  summary: 'Parse a QEMU migration stream fully and write it back from the decoded records (byte-identical).',
  usage: `rewrite IN OUT [--xml DOMAINXML] [--format ${STREAM_OUTPUT_FORMATS.join('|')}]`,
  operands: ['IN', 'OUT'],
  options: {
    // libvirt save images: replace the domain XML in the output (as virsh save-image-define).
    xml: { type: 'string' },
    format: { type: 'string' },
  },
  async run(args, io) {
    const [inPath, outPath] = args.positionals as [string, string];
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
    }, await libvirtOutputArgs(args.values));
    const bytes = (await stat(outPath)).size;
    const seconds = (performance.now() - t0) / 1000;
    io.result({ in: inPath, out: outPath, bytes, events, seconds }, () => `wrote ${outPath}: ${bytes} bytes from ${events} decoded records in ${seconds.toFixed(3)} s`);
    return 0;
  },
};
