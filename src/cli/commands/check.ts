// `migbridge check`: parses the options, runs the conformance checks (src/check) and
// prints the report. Exit 0 when every item passed (or is not applicable), 1 on findings.
// Ctrl-C (SIGINT/SIGTERM) stops the run between items; the devices it touched are reset.
import { UsageError } from '../../errors.js';
import { CHECK_GROUPS, type CheckGroup, formatCheckReport, runCheck } from '../../check/index.js';
import type { Command } from '../command.js';
import { optionalNumber } from './transfer-args.js';

function groupsArg(raw: unknown): CheckGroup[] | undefined {
  if (raw === undefined) return undefined;
  const names = (Array.isArray(raw) ? raw : [raw]).flatMap((v) => String(v).split(',')).map((s) => s.trim().toLowerCase().replace(/-/g, '_')).filter(Boolean);
  for (const n of names) if (!(CHECK_GROUPS as readonly string[]).includes(n)) throw new UsageError(`--only: unknown group ${JSON.stringify(n)} (${CHECK_GROUPS.join(', ')})`);
  return names as CheckGroup[];
}

export const checkCommand: Command = {
  name: ['check'],
  summary: 'VFIO migration conformance checks of a device (FSM, data_fd, sizes, resume, timing); read-only unless --destructive.',
  usage: 'check --device SPEC [--device SPEC2] [--destructive] [--only GROUP[,GROUP]...] [--read-timeout MS]',
  options: {
    device: { type: 'string', multiple: true },
    destructive: { type: 'boolean' },
    only: { type: 'string', multiple: true },
    'read-timeout': { type: 'string' },
  },
  async run(args, io) {
    if (args.positionals.length) throw new UsageError(`unexpected argument ${JSON.stringify(args.positionals[0])} (devices are given with --device SPEC)`);
    const devices = Array.isArray(args.values.device) ? args.values.device.map(String) : [];
    const only = groupsArg(args.values.only);
    const destructive = args.values.destructive === true;
    const ioTimeoutMs = optionalNumber(args, 'read-timeout');
    const ac = new AbortController();
    const stop = (sig: NodeJS.Signals): void => ac.abort(sig);
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
    try {
      const report = await runCheck({ devices, destructive, ...(only ? { only } : {}), ...(ioTimeoutMs !== undefined ? { ioTimeoutMs } : {}), signal: ac.signal });
      io.result(report, () => formatCheckReport(report, { destructive }));
      return report.findings ? 1 : 0;
    } finally {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
    }
  },
};
