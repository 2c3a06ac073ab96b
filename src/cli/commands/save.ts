// `migbridge save`: many devices' state, in parallel, into one QEMU migration stream.
import type { WriteStream } from 'node:tty';
import { UsageError } from '../../errors.js';
import { closeDevices, openDevices } from '../../engine/devices.js';
import { formatBytes, formatRate, Progress } from '../progress.js';
import { type SaveReport, save } from '../../engine/save.js';
import { openSink } from '../../engine/sink.js';
import type { Command } from '../command.js';
import { withSignals } from '../signals.js';
import { optionalNumber, optionalString, sinkTarget, stringList } from './transfer-args.js';
import { reportRecovered, transferNotes } from './transfer-notes.js';

export function saveHuman(r: SaveReport, where: string): string {
  const lines = r.devices.map(
    (d) =>
      `  ${d.id.padEnd(12)} ${d.idstr.padEnd(20)} ${formatBytes(d.bytes).padStart(10)} (precopy ${formatBytes(d.precopyBytes)}, stop-copy ${formatBytes(d.stopCopyBytes)}, estimate ${formatBytes(d.stopCopyEstimate)})  ${formatRate(d.stopCopyBytes / Math.max(d.seconds, 1e-6))}`,
  );
  lines.push(
    `saved ${r.devices.length} device(s), ${formatBytes(r.totalBytes)} of device data in ${r.seconds.toFixed(2)} s (${formatRate(r.totalBytes / Math.max(r.seconds, 1e-6))}) to ${where}`,
    `downtime: estimated ${r.downtime.estimateMs.toFixed(1)} ms (${r.downtime.rateBasis}), actual ${r.downtime.actualMs.toFixed(1)} ms; P2P stop ${r.p2p ? 'yes' : 'no'}; precopy rounds ${r.precopyRounds}`,
  );
  return lines.join('\n');
}

export const saveCommand: Command = {
  name: ['save'],
  summary: 'Save the state of one or more devices, in parallel, into a QEMU migration stream.',
  usage: 'save --device SPEC... (-o FILE | --fd N | --to ENDPOINT) [--precopy] [--max-downtime MS] [--resume-source] [--machine TYPE] [--idstr IDSTR...] [--read-timeout MS] [--write-timeout MS] [--no-init-data-sent] [--framing qemu|interleave] [--progress]',
  operands: [],
  options: {
    device: { type: 'string', multiple: true },
    'output-file': { type: 'string', short: 'o' },
    fd: { type: 'string' },
    to: { type: 'string' },
    precopy: { type: 'boolean' },
    'max-downtime': { type: 'string' },
    'resume-source': { type: 'boolean' },
    machine: { type: 'string' },
    idstr: { type: 'string', multiple: true },
    'no-init-data-sent': { type: 'boolean' },
    'read-timeout': { type: 'string' },
    'write-timeout': { type: 'string' },
    interleave: { type: 'boolean' },
    framing: { type: 'string' },
    progress: { type: 'boolean' },
  },
  async run(args, io) {
    const specs = stringList(args, 'device');
    if (specs.length === 0) throw new UsageError('give at least one --device SPEC');
    const idstrs = stringList(args, 'idstr');
    if (idstrs.length && idstrs.length !== specs.length) throw new UsageError(`--idstr given ${idstrs.length} times for ${specs.length} devices`);
    const target = sinkTarget(args);
    const maxDowntimeMs = optionalNumber(args, 'max-downtime');
    // The downtime estimate divides the stop-copy size by a transfer rate; only PRE_COPY
    // measures one. Without it the rate would be a guess, and the limit would guard nothing.
    if (maxDowntimeMs !== undefined && !args.values.precopy) {
      throw new UsageError('--max-downtime needs --precopy: the downtime estimate needs a transfer rate measured in PRE_COPY (without one it would assume 1 GiB/s and protect nothing)');
    }
    const machineType = optionalString(args, 'machine');
    const readTimeoutMs = optionalNumber(args, 'read-timeout');
    const interleave = framingIsInterleave(optionalString(args, 'framing'), Boolean(args.values.interleave));
    const writeTimeoutMs = optionalNumber(args, 'write-timeout');
    const onNote = transferNotes(io, args.values.progress === true, 'save');
    const devices = await openDevices(specs);
    try {
      const sink = await openSink(target);
      const progress = io.isTTY && io.output === 'human' ? new Progress(process.stderr as WriteStream, 'total') : undefined;
      const report = await withSignals(io, (signal) => save({
        signal,
        ...(onNote ? { onNote } : {}),
        ...(writeTimeoutMs !== undefined ? { writeTimeoutMs } : {}),
        devices,
        sink,
        ...(idstrs.length ? { idstrs } : {}),
        precopy: Boolean(args.values.precopy),
        ...(maxDowntimeMs !== undefined ? { maxDowntimeMs } : {}),
        resumeSource: Boolean(args.values['resume-source']),
        ...(machineType ? { machineType } : {}),
        initDataSent: !args.values['no-init-data-sent'],
        interleave,
        ...(readTimeoutMs !== undefined ? { readTimeoutMs } : {}),
        ...(progress ? { progress } : {}),
      })).catch((e: unknown) => reportRecovered(io, e));
      if (typeof report === 'number') return report;
      io.result({ ...report, stream: sink.description }, () => saveHuman(report, sink.description));
      return 0;
    } finally {
      await closeDevices(devices);
    }
  },
};

/**
 * --framing qemu (default: one END section per device, as QEMU writes it; bounded memory
 * makes the other devices wait while one END section is written) or interleave (PART
 * chunks across devices as they arrive: parallel and bounded). --interleave is the old
 * spelling of --framing interleave.
 */
function framingIsInterleave(framing: string | undefined, interleaveFlag: boolean): boolean {
  if (framing === undefined) return interleaveFlag;
  if (framing !== 'qemu' && framing !== 'interleave') throw new UsageError(`--framing must be qemu or interleave, got ${JSON.stringify(framing)}`);
  if (interleaveFlag && framing === 'qemu') throw new UsageError('--interleave contradicts --framing qemu');
  return framing === 'interleave';
}
