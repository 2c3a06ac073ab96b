// `migbridge check`: parses the options, runs the conformance checks (src/check) and
// prints the report. Exit 0 when every item passed (or is not applicable), 1 on findings.
// Ctrl-C (SIGINT/SIGTERM) stops the run between items; the devices it touched are reset.
import { UsageError } from '../../errors.js';
import { CHECK_GROUPS, type CheckGroup, formatCheckReport, runCheck } from '../../check/index.js';
import { withSignals } from '../signals.js';
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
  operands: [],
  options: {
    device: { type: 'string', multiple: true },
    destructive: { type: 'boolean' },
    only: { type: 'string', multiple: true },
    'read-timeout': { type: 'string' },
  },
  async run(args, io) {
    const devices = Array.isArray(args.values.device) ? args.values.device.map(String) : [];
    const only = groupsArg(args.values.only);
    const destructive = args.values.destructive === true;
    const ioTimeoutMs = optionalNumber(args, 'read-timeout');
    // Ctrl-C: the run stops and resets the devices it touched (a second signal exits at once).
    return withSignals(io, async (signal) => {
      const report = await runCheck({ devices, destructive, ...(only ? { only } : {}), ...(ioTimeoutMs !== undefined ? { ioTimeoutMs } : {}), signal });
      io.result(report, () => formatCheckReport(report, { destructive }));
      return report.findings ? 1 : 0;
    });
  },
};
