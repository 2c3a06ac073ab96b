// `migbridge reframe IN OUT [--to VERSION] [--vmdesc JSONFILE]`: make a stream loadable from a
// file (and, with --to, by an older QEMU), changing only the records such a load rejects.
import { readFile } from 'node:fs/promises';
import { channelCapturesBeside } from '../../qemu/multifd-index.js';
import { UsageError } from '../../errors.js';
import { parseQemuRelease, reframeStreamFile, REFRAME_TARGETS, type ReframeOptions } from '../../qemu/reframe.js';
import { parseVmDesc } from '../../qemu/vmdesc.js';
import type { Command } from '../command.js';
import { libvirtOutputArgs } from './libvirt-output-args.js';
import { LIBVIRT_FORMATS } from '../../libvirt/header.js';

export const reframeCommand: Command = {
  name: ['reframe'],
  summary: 'Make a captured stream loadable from a file (and by an older QEMU with --to): drops return-path commands, turns switchover-ack markers into END_OF_STATE, refuses what a file cannot replay.',
  usage: `reframe IN OUT [--to ${REFRAME_TARGETS[0]}..${REFRAME_TARGETS[REFRAME_TARGETS.length - 1]}] [--multifd CHANNELFILE...] [--vmdesc JSONFILE] [--force] [--format ${LIBVIRT_FORMATS.join('|')}] [--xml DOMAINXML]`,
  operands: ['IN', 'OUT'],
  options: {
    to: { type: 'string' },
    vmdesc: { type: 'string' },
    multifd: { type: 'string', multiple: true },
    force: { type: 'boolean' },
    format: { type: 'string' },
    xml: { type: 'string' },
  },
  async run(args, io) {
    const [inPath, outPath] = args.positionals as [string, string];
    const opts: ReframeOptions = {};
    const to = args.values.to;
    if (typeof to === 'string') {
      const target = parseQemuRelease(to);
      if (!target) throw new UsageError(`--to wants one of ${REFRAME_TARGETS.join(', ')}; got ${JSON.stringify(to)}`);
      opts.target = target;
    }
    if (args.values.force) {
      if (!opts.target) throw new UsageError('--force goes with --to VERSION (it writes a stream that QEMU version will refuse)');
      opts.force = true;
    }
    Object.assign(opts, await libvirtOutputArgs(args.values, LIBVIRT_FORMATS));
    const vmdescFile = args.values.vmdesc;
    if (typeof vmdescFile === 'string') opts.vmdesc = parseVmDesc(await readFile(vmdescFile));
    // The proxy tees multifd channel N beside the main stream as IN.multifd-N: found by default.
    const given = (args.values.multifd ?? []) as string[];
    opts.multifd = given.length > 0 ? given : await channelCapturesBeside(inPath);
    const r = await reframeStreamFile(inPath, outPath, opts);
    if (io.output === 'human') for (const w of r.warnings) io.stderr(`migbridge: warning: ${w}`);
    io.result({ in: inPath, out: outPath, to: typeof to === 'string' ? to : null, ...r }, () =>
      [
        ...r.multifd.map((c) => `multifd channel ${c.channelId}: ${c.path} (${c.bytes} bytes)`),
        ...r.changes.map((c) => `${c.offset}: ${c.what}${c.idstr ? ` (${c.idstr})` : ''} ${c.action}: ${c.why}`),
        r.changes.length === 0 ? `nothing to change: ${outPath} is a byte-identical copy` : `${r.changes.length} change(s)`,
        `wrote ${outPath}: ${r.bytesOut} bytes (in: ${r.bytesIn})`,
      ].join('\n'),
    );
    return 0;
  },
};

