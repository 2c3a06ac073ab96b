// The SET sequences QEMU issues (hw/vfio/migration.c; docs/vfio-migration.md §9, QEMU's call
// order), as data adapted to a device's flags. Each step is one SET; the kernel walks
// the combination path in between. The save and restore engines issue exactly these
// steps, phase by phase (planStep), and take from each step whether it yields a data_fd.
import { MigFlag, MigState } from './states.js';
import { type Transition, transition } from './transitions.js';

/** QEMU's phases that issue a SET on the source, in order. */
export type SourcePhase = 'save_setup' | 'vm_stop_prepare' | 'vm_stop' | 'save_complete_precopy' | 'save_cleanup';
/** The phases that issue a SET on the destination, in order ('load_complete' is migbridge's, see destinationPlan). */
export type DestinationPhase = 'load_setup' | 'load_complete' | 'vm_start_prepare' | 'vm_start';

export interface PlanStep<P extends string = string> extends Transition {
  /** QEMU's name for the phase that issues this SET. */
  readonly phase: P;
}

export interface SourcePlanOptions {
  /** Run PRE_COPY when the device supports it (default true). */
  readonly precopy?: boolean;
  /**
   * Take the P2P step when the device supports it (default true). False when another
   * device of the same migration lacks P2P: the step is all devices' or none's.
   */
  readonly p2p?: boolean;
  /** End in RUNNING instead of STOP: the source keeps running after the save. */
  readonly resume?: boolean;
}

export interface DestinationPlanOptions {
  /** Take the P2P step when the device supports it (default true; see SourcePlanOptions.p2p). */
  readonly p2p?: boolean;
  /** SET STOP before starting (see destinationPlan). Default false: QEMU's own order. */
  readonly stopFirst?: boolean;
}

function build<P extends string>(flags: number, start: MigState, targets: readonly (readonly [P, MigState])[]): PlanStep<P>[] {
  const steps: PlanStep<P>[] = [];
  let at = start;
  for (const [phase, target] of targets) {
    steps.push({ phase, ...transition(flags, at, target) });
    at = target;
  }
  return steps;
}

/**
 * Source: RUNNING -> [PRE_COPY -> (PRE_COPY_P2P)] -> STOP_COPY -> STOP when precopy is
 * wanted and supported, else RUNNING -> (RUNNING_P2P) -> STOP -> STOP_COPY -> STOP
 * (RUNNING instead of the last STOP with `resume`).
 */
export function sourcePlan(flags: number, opts: SourcePlanOptions = {}): PlanStep<SourcePhase>[] {
  const p2p = opts.p2p !== false && (flags & MigFlag.P2P) !== 0;
  const precopy = opts.precopy !== false && (flags & MigFlag.PRE_COPY) !== 0;
  const end = opts.resume ? MigState.RUNNING : MigState.STOP;
  const targets: (readonly [SourcePhase, MigState])[] = precopy
    ? [
        ['save_setup', MigState.PRE_COPY],
        ...(p2p ? [['vm_stop_prepare', MigState.PRE_COPY_P2P] as const] : []),
        ['vm_stop', MigState.STOP_COPY],
        ['save_cleanup', end],
      ]
    : [
        ...(p2p ? [['vm_stop_prepare', MigState.RUNNING_P2P] as const] : []),
        ['vm_stop', MigState.STOP],
        ['save_complete_precopy', MigState.STOP_COPY],
        ['save_cleanup', end],
      ];
  return build(flags, MigState.RUNNING, targets);
}

/**
 * Destination: RUNNING -> RESUMING, then (RUNNING_P2P) -> RUNNING at VM start. With
 * `stopFirst`, a SET STOP ('load_complete') comes before: QEMU leaves RESUMING on its way
 * to RUNNING_P2P or RUNNING (the kernel walks STOP), but a multi-device restore sets STOP
 * on every device first, so that each validates its data (on the exit from RESUMING)
 * before any device runs.
 */
export function destinationPlan(flags: number, opts: DestinationPlanOptions = {}): PlanStep<DestinationPhase>[] {
  const p2p = opts.p2p !== false && (flags & MigFlag.P2P) !== 0;
  return build(flags, MigState.RUNNING, [
    ['load_setup', MigState.RESUMING],
    ...(opts.stopFirst ? [['load_complete', MigState.STOP] as const] : []),
    ...(p2p ? [['vm_start_prepare', MigState.RUNNING_P2P] as const] : []),
    ['vm_start', MigState.RUNNING],
  ]);
}

/** The step of `plan` that `phase` issues; undefined when the plan has no SET in that phase. */
export function planStep<P extends string>(plan: readonly PlanStep<P>[], phase: P): PlanStep<P> | undefined {
  return plan.find((s) => s.phase === phase);
}
