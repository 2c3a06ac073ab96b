// `migbridge extract FILE [--ram DIR] [--out DIR]`: RAM block images, and per
// VFIO device its raw data, config blob and a manifest.json.
import { UsageError } from '../../errors.js';
import { extractStreamFile } from '../../qemu/extract.js';
import type { Command } from '../command.js';
import { configText } from './inspect.js';

export const extractCommand: Command = {
  name: ['extract'],
  summary: 'Extract RAM block images (--ram DIR) and/or each VFIO device\'s raw data and config blob with manifest.json (--out DIR).',
  usage: 'extract FILE [--ram DIR] [--out DIR]',
  operands: ['FILE'],
  options: {
    ram: { type: 'string' },
    out: { type: 'string' },
  },
  async run(args, io) {
    const [file] = args.positionals as [string];
    const ramDir = args.values.ram;
    const outDir = args.values.out;
    if (typeof ramDir !== 'string' && typeof outDir !== 'string') throw new UsageError('extract needs --ram DIR and/or --out DIR');
    const res = await extractStreamFile(file, {
      ...(typeof ramDir === 'string' ? { ramDir } : {}),
      ...(typeof outDir === 'string' ? { outDir } : {}),
    });
    const value = { ram: res.ram, vfio: res.vfio };
    io.result(value, () => {
      const lines: string[] = [];
      for (const b of res.ram) lines.push(`ram block ${b.name}: ${b.usedLength} bytes -> ${b.file}`);
      for (const d of res.vfio?.devices ?? []) {
        lines.push(`vfio ${d.idstr}: ${d.dataBytes} data bytes in ${d.chunks.length} records -> ${d.dataFile}; ${configText(d.configBytes)}${d.configFile ? ` -> ${d.configFile}` : ''}`);
      }
      if (res.vfio) lines.push(`manifest: ${outDir}/manifest.json`);
      return lines.join('\n');
    });
    return 0;
  },
};
