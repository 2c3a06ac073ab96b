// `migbridge rewrite IN OUT`: decode a stream completely and encode it again
// from the decoded records (qemu/rewrite.ts). Byte-identical output for every supported stream.
import { rewriteStreamFile } from '../../qemu/rewrite.js';
import type { Command } from '../command.js';

export const rewriteCommand: Command = {
  name: ['rewrite'],
  summary: 'Parse a QEMU migration stream fully and write it back from the decoded records (byte-identical).',
  usage: 'rewrite IN OUT [--xml DOMAINXML]',
  operands: ['IN', 'OUT'],
  options: {
    // libvirt save images: replace the domain XML in the output (as virsh save-image-define).
    xml: { type: 'string' },
  },
  async run(args, io) {
    const [inPath, outPath] = args.positionals as [string, string];
    const xmlFile = args.values.xml;
    const r = await rewriteStreamFile(inPath, outPath, typeof xmlFile === 'string' ? { xmlFile } : {});
    io.result(r, () => `wrote ${r.out}: ${r.bytes} bytes from ${r.events} decoded records in ${r.seconds.toFixed(3)} s`);
    return 0;
  },
};
