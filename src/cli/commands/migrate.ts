// `migbridge migrate --src-qmp unix:PATH --dst-qmp unix:PATH ...`: one live migration between
// two QEMUs driven over QMP, with progress and a report of both sides. See src/migrate/run.ts.
import { UsageError } from '../../errors.js';
import { formatBytes } from '../progress.js';
import { MigrateFailedError } from '../../migrate/errors.js';
import type { MigrateProgress } from '../../migrate/progress.js';
import { progressBar, progressJson } from '../migrate-progress.js';
import type { MigrateReport, SideReport } from '../../migrate/report.js';
import { migrate } from '../../migrate/run.js';
import { parseCapabilities, parseParameters } from '../../migrate/settings.js';
import type { Command, CommandIO } from '../command.js';
import { withSignals } from '../signals.js';
import { proxyHuman } from './proxy.js';
import { optionalNumber, optionalString, stringList } from './transfer-args.js';

function qmpPath(v: string | undefined, name: string): string {
  if (v === undefined) throw new UsageError(`--${name} unix:PATH is required`);
  if (!v.startsWith('unix:') || v.length === 5) throw new UsageError(`--${name} takes unix:PATH (the QEMU's -qmp socket), got ${JSON.stringify(v)}`);
  return v.slice(5);
}

function sideLine(name: string, s: SideReport): string {
  return `${name} (QEMU ${s.version}, ${s.qmp}): migration ${s.migration ?? 'unknown'}, run state ${s.runState ?? 'unknown'}` +
    `${s.error ? `, error: ${s.error}` : ''}${s.action ? `; migbridge sent ${s.action}` : ''}`;
}

const ms = (v: number | null): string => (v === null ? 'n/a' : `${v} ms`);

export function migrateHuman(r: MigrateReport): string {
  const lines = [
    `${r.ok ? 'migration completed' : 'migration FAILED'}: ${r.uri || '(not started)'} (destination incoming ${r.incoming})`,
    sideLine('source', r.source),
    sideLine('destination', r.destination),
    `total time ${ms(r.totalTimeMs)}, downtime ${ms(r.downtimeMs)} (QEMU), ${ms(r.wireDowntimeMs)} (on the wire), setup ${ms(r.setupTimeMs)}; ${r.passes} passes; migbridge saw ${r.wallTimeMs} ms`,
    `transferred: RAM ${r.ramBytes === null ? 'n/a' : formatBytes(r.ramBytes)}, VFIO ${r.vfioBytes === null ? 'n/a' : formatBytes(r.vfioBytes)}`,
    ...r.vfio.map((d) => `  vfio ${d.idstr}: ${d.dataBytes} bytes (precopy ${d.precopyBytes}, stop-copy ${d.stopCopyBytes})`),
  ];
  if (r.interrupted) lines.push(r.interrupted);
  if (r.failure) lines.push(`failure (${r.failure.side}): ${r.failure.message}`);
  if (r.proxy) lines.push('proxy:', ...proxyHuman(r.proxy).split('\n').map((l) => `  ${l}`));
  return lines.join('\n');
}

/** A bar redrawn in place on a terminal; JSON lines otherwise. */
function progressPrinter(io: CommandIO): { show: (p: MigrateProgress) => void; done: () => void } {
  const tty = process.stderr.isTTY === true;
  let drawn = false;
  return {
    show: (p) => {
      if (tty) {
        process.stderr.write(`\r\x1b[2K${progressBar(p)}`);
        drawn = true;
      } else io.stderr(progressJson(p));
    },
    done: () => { if (drawn) process.stderr.write('\n'); },
  };
}

export const migrateCommand: Command = {
  name: ['migrate'],
  summary: 'Migrate a running QEMU to a waiting one (-incoming defer) over their QMP sockets: same capabilities on both, progress, report of both sides.',
  usage: 'migrate --src-qmp unix:PATH --dst-qmp unix:PATH [--incoming tcp:HOST:PORT|unix:PATH|fd] [--uri URI] [--via-proxy] [--tee FILE] [--caps NAME=on,...] [--params NAME=VALUE,...] [--max-downtime MS] [--qmp-timeout MS]',
  operands: [],
  options: {
    'src-qmp': { type: 'string' },
    'dst-qmp': { type: 'string' },
    incoming: { type: 'string' },
    uri: { type: 'string' },
    'via-proxy': { type: 'boolean' },
    tee: { type: 'string' },
    caps: { type: 'string', multiple: true },
    params: { type: 'string', multiple: true },
    'max-downtime': { type: 'string' },
    'qmp-timeout': { type: 'string' },
  },
  async run(args, io) {
    const sourceQmp = qmpPath(optionalString(args, 'src-qmp'), 'src-qmp');
    const destinationQmp = qmpPath(optionalString(args, 'dst-qmp'), 'dst-qmp');
    if (sourceQmp === destinationQmp) throw new UsageError('--src-qmp and --dst-qmp name the same socket');
    const tee = optionalString(args, 'tee');
    const uri = optionalString(args, 'uri');
    const maxDowntimeMs = optionalNumber(args, 'max-downtime');
    const qmpTimeoutMs = optionalNumber(args, 'qmp-timeout');
    const progress = progressPrinter(io);
    try {
      const report = await withSignals(io, (signal) => migrate({
        sourceQmp, destinationQmp, incoming: optionalString(args, 'incoming') ?? 'fd', signal,
        viaProxy: args.values['via-proxy'] === true,
        capabilities: parseCapabilities(stringList(args, 'caps')),
        parameters: parseParameters(stringList(args, 'params')),
        onProgress: progress.show,
        ...(uri !== undefined ? { uri } : {}),
        ...(tee !== undefined ? { tee } : {}),
        ...(maxDowntimeMs !== undefined ? { maxDowntimeMs } : {}),
        ...(qmpTimeoutMs !== undefined ? { qmpTimeoutMs } : {}),
      }));
      progress.done();
      io.result(report, () => migrateHuman(report));
      return 0;
    } catch (e) {
      progress.done();
      if (e instanceof MigrateFailedError) {
        io.result(e.report, () => migrateHuman(e.report));
        io.stderr(io.output === 'json' ? JSON.stringify({ error: e.toJSON() }) : `migbridge: ${e.message}`);
        return 1;
      }
      throw e;
    }
  },
};
