// `migbridge restore`: a QEMU migration stream's VFIO sections into devices, in parallel.
import type { WriteStream } from 'node:tty';
import { MigbridgeError, UsageError } from '../../errors.js';
import { closeDevices, openDevices } from '../../engine/devices.js';
import { formatBytes, formatRate, Progress } from '../progress.js';
import { type DeviceRestoreReport, type RestoreReport, RestoreFailedError, restore } from '../../engine/restore.js';
import { openEvents } from '../../engine/source.js';
import { channelCapturesBeside } from '../../qemu/multifd-index.js';
import type { Command } from '../command.js';
import { withSignals } from '../signals.js';
import { optionalSize, sourceTarget, stringList } from './transfer-args.js';
import { reportRecovered, transferNotes } from './transfer-notes.js';

function okStatus(d: DeviceRestoreReport): string {
  if (d.sourceMismatch) return `ok, intact but NOT the expected state: ${d.sourceMismatch}`;
  if (d.verified) return `ok, verified${d.verifiedAgainst ? ` against ${d.verifiedAgainst}` : ''}`;
  return 'ok';
}

export function restoreHuman(r: RestoreReport): string {
  const lines = r.devices.map((d) => {
    const status = d.ok ? okStatus(d) : `FAILED: ${String(d.error?.message ?? 'error')}${d.recovery ? ` (${d.recovery})` : ''}`;
    return `  ${d.id.padEnd(12)} <- ${(d.idstr ?? '-').padEnd(20)} ${formatBytes(d.bytes).padStart(10)} in ${d.chunks} chunks  ${status}`;
  });
  // "verified" proves the bytes arrived intact; which source they came from the user checks.
  if (r.devices.some((d) => d.verifiedAgainst)) {
    lines.push('  (verified: the restored state matches the digest its source wrote into the stream, so it arrived intact; a sim device given seed= must also hold that source\'s state)');
  }
  lines.push(`restored ${r.devices.filter((d) => d.ok).length}/${r.devices.length} device(s), ${formatBytes(r.totalBytes)} in ${r.seconds.toFixed(2)} s (${formatRate(r.totalBytes / Math.max(r.seconds, 1e-6))})`);
  return lines.join('\n');
}

/** --map IDSTR=SPEC (SPEC one of the --device arguments, or its 0-based position). */
export function parseMap(entries: readonly string[], specs: readonly string[]): Map<string, number> {
  const map = new Map<string, number>();
  for (const e of entries) {
    const eq = e.indexOf('='); // idstrs have no '=', specs may (sim:size=...)
    if (eq <= 0) throw new UsageError(`--map takes IDSTR=SPEC, got ${JSON.stringify(e)}`);
    const idstr = e.slice(0, eq);
    const spec = e.slice(eq + 1);
    let index = specs.indexOf(spec);
    if (index < 0 && /^\d+$/.test(spec) && Number(spec) < specs.length) index = Number(spec);
    if (index < 0) throw new UsageError(`--map ${e}: ${spec} is not one of the --device arguments`);
    map.set(idstr, index);
  }
  return map;
}

export const restoreCommand: Command = {
  name: ['restore'],
  summary: "Restore devices from a QEMU migration stream's VFIO sections, in parallel.",
  usage: 'restore (-i FILE [--multifd CHANNELFILE...] | --fd N | --from ENDPOINT) --device SPEC... [--map IDSTR=SPEC...] [--idstr IDSTR...] [--max-device-data SIZE] [--progress]',
  operands: [],
  options: {
    input: { type: 'string', short: 'i' },
    fd: { type: 'string' },
    from: { type: 'string' },
    device: { type: 'string', multiple: true },
    map: { type: 'string', multiple: true },
    idstr: { type: 'string', multiple: true },
    multifd: { type: 'string', multiple: true },
    'max-device-data': { type: 'string' },
    progress: { type: 'boolean' },
  },
  async run(args, io) {
    const specs = stringList(args, 'device');
    if (specs.length === 0) throw new UsageError('give at least one --device SPEC');
    const source = sourceTarget(args);
    const channels = stringList(args, 'multifd');
    if (channels.length && !('file' in source)) throw new UsageError('--multifd goes with -i FILE');
    // A proxy tee of a multifd migration: its channel tees (FILE.multifd-N) are found beside it.
    if ('file' in source) source.multifd = channels.length ? channels : await channelCapturesBeside(source.file);
    const map = parseMap(stringList(args, 'map'), specs);
    const idstrs = stringList(args, 'idstr');
    if (idstrs.length && idstrs.length !== specs.length) throw new UsageError(`--idstr given ${idstrs.length} times for ${specs.length} devices`);
    const maxDeviceBytes = optionalSize(args, 'max-device-data');
    const onNote = transferNotes(io, args.values.progress === true, 'restore');
    const devices = await openDevices(specs);
    try {
      const progress = io.isTTY && io.output === 'human' ? new Progress(process.stderr as WriteStream, 'total') : undefined;
      return await withSignals(io, async (signal) => {
        const events = await openEvents(source, signal, onNote ? (endpoint) => onNote({ type: 'listening', endpoint }) : undefined);
        // A file is read twice: once whole before any device is touched (hostile structure
        // refused then), once to restore.
        const preflight = 'file' in source ? await openEvents(source, signal) : undefined;
        try {
          const report = await restore({
            events, devices, map, signal,
            ...(preflight ? { preflight } : {}),
            ...(idstrs.length ? { idstrs } : {}),
            ...(progress ? { progress } : {}),
            ...(onNote ? { onNote } : {}),
            ...(maxDeviceBytes !== undefined ? { maxDeviceBytes } : {}),
          });
          io.result(report, () => restoreHuman(report));
          // Loaded intact, but not the state the user said to expect: not a success.
          const mismatched = report.devices.filter((d) => d.sourceMismatch);
          for (const d of mismatched) {
            const e = new MigbridgeError('ESOURCEMISMATCH', `${d.id}: ${d.sourceMismatch}`, { device: d.id });
            io.stderr(io.output === 'json' ? JSON.stringify({ error: e.toJSON() }) : `migbridge: ${e.message}`);
          }
          return mismatched.length ? 1 : 0;
        } catch (e) {
          if (e instanceof RestoreFailedError) {
            io.result(e.report, () => restoreHuman(e.report));
            io.stderr(io.output === 'json' ? JSON.stringify({ error: e.toJSON() }) : `migbridge: ${e.message}`);
            return 1;
          }
          return reportRecovered(io, e);
        }
      });
    } finally {
      await closeDevices(devices);
    }
  },
};
