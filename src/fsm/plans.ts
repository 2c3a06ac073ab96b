// The SET sequences QEMU issues (hw/vfio/migration.c; docs/vfio-migration.md §9, QEMU's call
// order), as data adapted to a device's flags. Each step is one SET; the kernel walks
// the combination path in between.
import { MigFlag, MigState } from './states.js';
import { type Transition, transition } from './transitions.js';

export interface PlanStep extends Transition {
  /** QEMU's name for the phase that issues this SET. */
  readonly phase: string;
}

function build(flags: number, start: MigState, targets: readonly [string, MigState][]): PlanStep[] {
  const steps: PlanStep[] = [];
  let at = start;
  for (const [phase, target] of targets) {
    steps.push({ phase, ...transition(flags, at, target) });
    at = target;
  }
  return steps;
}

/**
 * Source: RUNNING -> [PRE_COPY -> (PRE_COPY_P2P)] -> STOP_COPY -> STOP when precopy is
 * wanted and supported, else RUNNING -> (RUNNING_P2P) -> STOP -> STOP_COPY -> STOP.
 */
export function sourcePlan(flags: number, opts: { precopy?: boolean } = {}): PlanStep[] {
  const p2p = (flags & MigFlag.P2P) !== 0;
  const precopy = opts.precopy !== false && (flags & MigFlag.PRE_COPY) !== 0;
  const targets: [string, MigState][] = precopy
    ? [
        ['save_setup', MigState.PRE_COPY],
        ...(p2p ? ([['vm_stop_prepare', MigState.PRE_COPY_P2P]] as [string, MigState][]) : []),
        ['vm_stop', MigState.STOP_COPY],
        ['save_cleanup', MigState.STOP],
      ]
    : [
        ...(p2p ? ([['vm_stop_prepare', MigState.RUNNING_P2P]] as [string, MigState][]) : []),
        ['vm_stop', MigState.STOP],
        ['save_complete_precopy', MigState.STOP_COPY],
        ['save_cleanup', MigState.STOP],
      ];
  return build(flags, MigState.RUNNING, targets);
}

/** Destination: RUNNING -> RESUMING, then (RUNNING_P2P) -> RUNNING at VM start. */
export function destinationPlan(flags: number): PlanStep[] {
  const p2p = (flags & MigFlag.P2P) !== 0;
  return build(flags, MigState.RUNNING, [
    ['load_setup', MigState.RESUMING],
    ...(p2p ? ([['vm_start_prepare', MigState.RUNNING_P2P]] as [string, MigState][]) : []),
    ['vm_start', MigState.RUNNING],
  ]);
}
