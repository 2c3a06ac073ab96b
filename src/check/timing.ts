// Group "timing" (destructive, informational): how long single arcs take (median and p90
// of the SET ioctl as the caller sees it) and the stop-copy read rate. Figures only: they
// are never findings, since the uAPI sets no bound; an arc that fails is left to fsm.
import { MigFlag, MigState, stateName } from '../fsm/index.js';
import type { CheckContext } from './context.js';
import { type Probe, setText } from './probe.js';
import type { WhyTable } from './types.js';

export const TIMING_WHY: WhyTable = {};

/** The arcs timed, for these flags: the stop/resume cycle QEMU walks, and the session arcs. */
export function timedArcs(flags: number): [MigState, MigState][] {
  const { RUNNING, RUNNING_P2P, STOP, STOP_COPY, PRE_COPY } = MigState;
  const arcs: [MigState, MigState][] = flags & MigFlag.P2P
    ? [[RUNNING, RUNNING_P2P], [RUNNING_P2P, STOP], [STOP, RUNNING_P2P], [RUNNING_P2P, RUNNING]]
    : [[RUNNING, STOP], [STOP, RUNNING]];
  arcs.push([STOP, STOP_COPY], [STOP_COPY, STOP]);
  if (flags & MigFlag.PRE_COPY) arcs.push([RUNNING, PRE_COPY], [PRE_COPY, RUNNING]);
  return arcs;
}

function quantile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

export async function timingGroup(ctx: CheckContext, p: Probe): Promise<void> {
  const flags = await p.dev.migrationFlags();
  for (const [from, to] of timedArcs(flags)) {
    const item = `arc ${stateName(from)} -> ${stateName(to)}`;
    const us: number[] = [];
    let failed: string | undefined;
    for (let i = 0; i < ctx.timingRepeats && !failed; i++) {
      ctx.checkInterrupted();
      const at = await p.reach(from);
      if (!at.ok) failed = `could not reach ${stateName(from)}: ${setText(at)}`;
      else {
        const o = await p.set(to);
        if (o.ok) us.push(o.us);
        else failed = `SET ${stateName(from)} -> ${stateName(to)}: ${setText(o)} (see fsm)`;
      }
      await p.reset();
    }
    if (failed) {
      ctx.result('timing', p, item, 'n/a', 'figures only', failed);
      continue;
    }
    us.sort((a, b) => a - b);
    const median = quantile(us, 0.5);
    const p90 = quantile(us, 0.9);
    ctx.result('timing', p, item, 'pass', 'figures only (the uAPI sets no bound)', `median ${median.toFixed(1)} us, p90 ${p90.toFixed(1)} us over ${us.length} SETs`, {
      ioctl: 'VFIO_DEVICE_FEATURE SET MIG_DEVICE_STATE',
      samples: us.length,
      medianUs: Number(median.toFixed(1)),
      p90Us: Number(p90.toFixed(1)),
    });
  }
  const s = await p.capture();
  if (!s.ok) ctx.result('timing', p, 'stop-copy read rate', 'n/a', 'figures only', s.reason);
  else {
    const mbs = s.us > 0 ? s.data.length / s.us : 0;
    ctx.result('timing', p, 'stop-copy read rate', 'pass', 'figures only', `${s.data.length} bytes in ${(s.us / 1000).toFixed(3)} ms (${mbs.toFixed(1)} MB/s)`, {
      bytes: s.data.length,
      reads: s.reads,
      microseconds: Number(s.us.toFixed(1)),
    });
  }
}
