// `migbridge devices`: list VFIO migration devices (real or simulated) with their
// migration flags, current state and stop-copy size (described by engine/devices.ts).
import { UsageError } from '../../errors.js';
import { type DeviceDescription, describeDevices } from '../../engine/devices.js';
import type { Command } from '../command.js';

function human(rows: DeviceDescription[]): string {
  if (rows.length === 0) return 'no VFIO devices found (use --device SPEC or --sim N)';
  const head = ['ID', 'KIND', 'FLAGS', 'STATE', 'STOP-COPY BYTES'];
  const body = rows.map((r) =>
    r.error ? [r.id ?? r.spec, r.kind ?? '-', '-', '-', `error: ${r.error.message}`] : [r.id!, r.kind!, r.flagsName!, r.state!, String(r.stopCopyBytes)],
  );
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const line = (cells: string[]): string => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join('  ');
  return [line(head), ...body.map(line)].join('\n');
}

export const devicesCommand: Command = {
  name: ['devices'],
  summary: 'List VFIO migration devices: id, kind, migration flags, state, stop-copy size (host devices by default).',
  usage: 'devices [--sim N [--sim-spec SPEC]] [--device SPEC...]',
  operands: [],
  options: {
    sim: { type: 'string' },
    'sim-spec': { type: 'string' },
    device: { type: 'string', multiple: true },
  },
  async run(args, io) {
    const specs: string[] = [];
    const given = args.values.device;
    if (Array.isArray(given)) for (const d of given) specs.push(String(d));
    const simRaw = args.values.sim;
    if (simRaw !== undefined) {
      if (typeof simRaw !== 'string' || !/^\d+$/.test(simRaw) || Number(simRaw) > 1024) throw new UsageError(`--sim takes a device count (0..1024), got ${JSON.stringify(simRaw)}`);
      const base = typeof args.values['sim-spec'] === 'string' ? args.values['sim-spec'] : 'sim:';
      if (!base.startsWith('sim')) throw new UsageError(`--sim-spec must be a sim: spec, got ${JSON.stringify(base)}`);
      for (let i = 0; i < Number(simRaw); i++) specs.push(base);
    } else if (args.values['sim-spec'] !== undefined) {
      throw new UsageError('--sim-spec needs --sim N');
    }
    const rows = await describeDevices(specs.length || simRaw !== undefined ? specs : undefined);
    io.result({ devices: rows }, () => human(rows));
    return rows.some((r) => r.error) ? 1 : 0;
  },
};
