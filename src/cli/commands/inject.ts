// `migbridge inject FILE --device-data IDSTR=RAWFILE... -o OUT`: replace VFIO
// devices' data in a stream, everything else byte-identical.
import { UsageError } from '../../errors.js';
import { injectDeviceData, type DeviceDataReplacement } from '../../qemu/inject.js';
import type { Command } from '../command.js';
import { libvirtOutputArgs, STREAM_OUTPUT_FORMATS } from './libvirt-output-args.js';

export const injectCommand: Command = {
  name: ['inject'],
  summary: 'Replace a VFIO device\'s data in a QEMU stream (everything else, config blob included, stays byte-identical).',
  usage: `inject FILE -o OUT --device-data IDSTR=RAWFILE... [--format ${STREAM_OUTPUT_FORMATS.join('|')}] [--xml DOMAINXML]`,
  operands: ['FILE'],
  options: {
    'device-data': { type: 'string', multiple: true },
    out: { type: 'string', short: 'o' },
    // libvirt save images: the output's format and domain XML (as virsh save-image-define).
    format: { type: 'string' },
    xml: { type: 'string' },
  },
  async run(args, io) {
    const [file] = args.positionals as [string];
    const out = args.values.out;
    if (typeof out !== 'string') throw new UsageError('inject needs -o OUT');
    const specs = (args.values['device-data'] ?? []) as string[];
    if (specs.length === 0) throw new UsageError('inject needs at least one --device-data IDSTR=RAWFILE');
    const reps: DeviceDataReplacement[] = specs.map((s) => {
      const eq = s.indexOf('=');
      if (eq <= 0 || eq === s.length - 1) throw new UsageError(`--device-data wants IDSTR=RAWFILE, got ${JSON.stringify(s)}`);
      return { idstr: s.slice(0, eq), file: s.slice(eq + 1) };
    });
    const seen = new Set<string>();
    for (const r of reps) {
      if (seen.has(r.idstr)) throw new UsageError(`--device-data given twice for ${r.idstr}`);
      seen.add(r.idstr);
    }
    const devices = await injectDeviceData(file, out, reps, {}, await libvirtOutputArgs(args.values));
    io.result({ out, devices }, () =>
      devices.map((d) => `${d.idstr}: ${d.oldBytes} -> ${d.newBytes} data bytes (records ${d.oldChunks.join('+') || 'none'} -> ${d.newChunks.join('+') || 'none'})`).concat([`wrote ${out}`]).join('\n'),
    );
    return 0;
  },
};
