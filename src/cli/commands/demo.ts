// `migbridge demo`: parallel save/restore of simulated devices, verified end to end.
import * as path from 'node:path';
import type { WriteStream } from 'node:tty';
import { UsageError } from '../../errors.js';
import { type DemoReport, runDemo } from '../../engine/demo.js';
import { formatBytes, formatRate, Progress } from '../progress.js';
import type { Command } from '../command.js';
import { optionalNumber, optionalString } from './transfer-args.js';

/** `ownDir`: the demo made the stream's directory (no --dir), so that is what to delete. */
function human(r: DemoReport, ownDir: boolean): string {
  const lines = ['device   restored-into   bytes        save rate     verified'];
  for (const d of r.devices) {
    lines.push(
      `${d.id.padEnd(8)} ${d.restoredInto.padEnd(15)} ${formatBytes(d.bytes).padStart(10)}  ${formatRate(d.bytes / Math.max(d.saveSeconds, 1e-6)).padStart(12)}  ${d.verified ? 'yes' : 'NO'}`,
    );
  }
  lines.push(
    '',
    `save:    ${formatBytes(r.totalBytes)} from ${r.devices.length} devices in ${r.save.seconds.toFixed(2)} s = ${formatRate(r.save.bytesPerSecond)} (downtime ${r.save.downtime.actualMs.toFixed(0)} ms, estimated ${r.save.downtime.estimateMs.toFixed(0)} ms)`,
    `inspect: ${r.inspect.records} records, ${r.inspect.vfioSections} VFIO devices, ${formatBytes(r.inspect.dataBytes)} of device data`,
    `restore: ${formatBytes(r.totalBytes)} into ${r.devices.length} devices in ${r.restore.seconds.toFixed(2)} s = ${formatRate(r.restore.bytesPerSecond)}`,
    `verified: ${r.devices.filter((d) => d.verified).length}/${r.devices.length} devices match their source's state digest`,
    `stream:  ${r.stream} (${formatBytes(r.streamBytes)}); inspect it with: migbridge inspect ${r.stream}`,
    `left behind: ${r.stream} (${formatBytes(r.streamBytes)}); delete ${ownDir ? `${path.dirname(r.stream)} (made for this demo)` : 'it'} when done`,
  );
  return lines.join('\n');
}

export const demoCommand: Command = {
  name: ['demo'],
  summary: 'Save N simulated devices in parallel, inspect the stream, restore into N fresh devices, verify every one.',
  usage: 'demo [--devices 8] [--size 64MiB] [--spec KEY=VALUE,...] [--precopy] [--dir DIR]',
  operands: [],
  options: {
    devices: { type: 'string' },
    size: { type: 'string' },
    spec: { type: 'string' },
    precopy: { type: 'boolean' },
    dir: { type: 'string' },
  },
  async run(args, io) {
    const devices = optionalNumber(args, 'devices') ?? 8;
    if (!Number.isInteger(devices) || devices < 1 || devices > 256) throw new UsageError('--devices must be 1..256');
    const size = optionalString(args, 'size') ?? '64MiB';
    const spec = [`size=${size}`, optionalString(args, 'spec')].filter(Boolean).join(',');
    const dir = optionalString(args, 'dir');
    const report = await runDemo({
      devices,
      spec,
      precopy: Boolean(args.values.precopy),
      ...(dir ? { dir } : {}),
      ...(io.isTTY && io.output === 'human' ? { progress: (phase: 'save' | 'restore') => new Progress(process.stderr as WriteStream, phase) } : {}),
    });
    io.result(report, () => human(report, dir === undefined));
    return report.verified ? 0 : 1;
  },
};
