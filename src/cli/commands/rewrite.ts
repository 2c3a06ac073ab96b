// `migbridge rewrite IN OUT`: decode a stream completely and encode it again
// from the decoded records (qemu/rewrite.ts). Byte-identical output for every supported stream.
import { rewriteStreamFile } from '../../qemu/rewrite.js';
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
    const r = await rewriteStreamFile(inPath, outPath, await libvirtOutputArgs(args.values));
    io.result(r, () => `wrote ${r.out}: ${r.bytes} bytes from ${r.events} decoded records in ${r.seconds.toFixed(3)} s`);
    return 0;
  },
};
