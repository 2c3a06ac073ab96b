// The human form of a check report: per group a count line, then one line per finding
// (what the uAPI or QEMU expects, what the device did, why it matters for a migration).
import { flagsName } from '../fsm/index.js';
import { DATA_FD_WHY } from './data-fd.js';
import { FSM_WHY } from './fsm.js';
import { RESUME_WHY } from './resume.js';
import { SIZES_WHY } from './sizes.js';
import { TIMING_WHY } from './timing.js';
import { CHECK_GROUPS, type CheckGroup, type CheckReport, type CheckResult, type WhyTable } from './types.js';

const WHY: Record<CheckGroup, WhyTable> = { fsm: FSM_WHY, data_fd: DATA_FD_WHY, sizes: SIZES_WHY, resume: RESUME_WHY, timing: TIMING_WHY };

/** Why a finding of this item matters (items named "arcs into X" share the entry "arcs"). */
export function whyItMatters(r: Pick<CheckResult, 'group' | 'item'>): string | undefined {
  const t = WHY[r.group];
  return t[r.item] ?? t[r.item.split(' ')[0]!];
}

export function formatCheckReport(report: CheckReport, opts: { destructive: boolean }): string {
  const lines: string[] = [];
  for (const d of report.devices) {
    lines.push(`device ${d.id} (${d.spec}, ${d.kind}): flags ${d.flags === undefined ? '?' : flagsName(d.flags)}, state ${d.state ?? '?'}`);
  }
  for (const g of CHECK_GROUPS) {
    const rs = report.results.filter((r) => r.group === g);
    if (!rs.length) continue;
    const count = (s: string): number => rs.filter((r) => r.status === s).length;
    lines.push('', `${g.padEnd(8)} ${count('pass')} pass, ${count('finding')} finding${count('finding') === 1 ? '' : 's'}, ${count('n/a')} n/a`);
    for (const r of rs) {
      if (r.status === 'finding') {
        const why = whyItMatters(r);
        lines.push(`  FINDING [${r.evidence.device}] ${r.item}: expected ${r.expected}; observed ${r.observed}${why ? `; matters because ${why}` : ''}`);
      } else if (g === 'timing' && r.status === 'pass') {
        lines.push(`  [${r.evidence.device}] ${r.item}: ${r.observed}`);
      }
    }
  }
  if (!opts.destructive) lines.push('', 'read-only checks only: add --destructive (and a second --device) for the FSM arcs, data_fd, sizes, resume and timing checks');
  lines.push('', `${report.findings} finding${report.findings === 1 ? '' : 's'}`);
  return lines.join('\n');
}
