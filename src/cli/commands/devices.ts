// `migbridge devices`: list VFIO migration devices (real or simulated) with their
// migration flags, current state and stop-copy size.
import { MigbridgeError, UsageError } from '../../errors.js';
import { flagsName, stateName } from '../../fsm/index.js';
import type { MigrationDevice } from '../../vfio/device.js';
import { listHostDevices, openDevice } from '../../vfio/open.js';
import type { Command } from '../command.js';

export interface DeviceRow {
  spec: string;
  id?: string;
  kind?: string;
  flags?: number;
  flagsName?: string;
  state?: string;
  stopCopyBytes?: bigint;
  error?: { code: string; errno?: number; message: string };
}

async function describe(spec: string): Promise<DeviceRow> {
  let dev: MigrationDevice | undefined;
  try {
    dev = await openDevice(spec);
    const flags = await dev.migrationFlags();
    const row: DeviceRow = { spec, id: dev.id, kind: dev.kind, flags, flagsName: flagsName(flags) };
    row.state = stateName(await dev.state());
    row.stopCopyBytes = await dev.stopCopySize();
    return row;
  } catch (e) {
    if (e instanceof UsageError) throw e;
    const err = e instanceof MigbridgeError ? { code: e.code, ...(e.errno !== undefined ? { errno: e.errno } : {}), message: e.message } : { code: 'ERROR', message: String(e) };
    return { spec, ...(dev ? { id: dev.id, kind: dev.kind } : {}), error: err };
  } finally {
    await dev?.close().catch(() => undefined);
  }
}

function human(rows: DeviceRow[]): string {
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
    const list = specs.length || simRaw !== undefined ? specs : listHostDevices();
    const rows: DeviceRow[] = [];
    for (const s of list) rows.push(await describe(s));
    io.result({ devices: rows }, () => human(rows));
    return rows.some((r) => r.error) ? 1 : 0;
  },
};
