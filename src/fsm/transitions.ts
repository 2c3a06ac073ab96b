// The kernel's combination-transition logic, as data plus a short loop, so it can be
// checked line by line against vfio_mig_get_next_state() in drivers/vfio/vfio_main.c
// (Linux 6.12.117, which carries the ERROR-sentinel guard in the skip loop).
import { ALL_STATES, FsmError, MigFlag, MigState, STATE_COUNT, isState, stateName } from './states.js';
import { InternalError } from '../errors.js';

const { ERROR, STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P } = MigState;

/** vfio_from_fsm_table: NEXT_STEP[cur][target] is the next state to visit. */
const NEXT_STEP: Record<MigState, Record<MigState, MigState>> = {
  [STOP]: {
    [STOP]: STOP, [RUNNING]: RUNNING_P2P, [PRE_COPY]: RUNNING_P2P, [PRE_COPY_P2P]: RUNNING_P2P,
    [STOP_COPY]: STOP_COPY, [RESUMING]: RESUMING, [RUNNING_P2P]: RUNNING_P2P, [ERROR]: ERROR,
  },
  [RUNNING]: {
    [STOP]: RUNNING_P2P, [RUNNING]: RUNNING, [PRE_COPY]: PRE_COPY, [PRE_COPY_P2P]: RUNNING_P2P,
    [STOP_COPY]: RUNNING_P2P, [RESUMING]: RUNNING_P2P, [RUNNING_P2P]: RUNNING_P2P, [ERROR]: ERROR,
  },
  [PRE_COPY]: {
    [STOP]: RUNNING, [RUNNING]: RUNNING, [PRE_COPY]: PRE_COPY, [PRE_COPY_P2P]: PRE_COPY_P2P,
    [STOP_COPY]: PRE_COPY_P2P, [RESUMING]: RUNNING, [RUNNING_P2P]: RUNNING, [ERROR]: ERROR,
  },
  [PRE_COPY_P2P]: {
    [STOP]: RUNNING_P2P, [RUNNING]: RUNNING_P2P, [PRE_COPY]: PRE_COPY, [PRE_COPY_P2P]: PRE_COPY_P2P,
    [STOP_COPY]: STOP_COPY, [RESUMING]: RUNNING_P2P, [RUNNING_P2P]: RUNNING_P2P, [ERROR]: ERROR,
  },
  [STOP_COPY]: {
    [STOP]: STOP, [RUNNING]: STOP, [PRE_COPY]: ERROR, [PRE_COPY_P2P]: ERROR,
    [STOP_COPY]: STOP_COPY, [RESUMING]: STOP, [RUNNING_P2P]: STOP, [ERROR]: ERROR,
  },
  [RESUMING]: {
    [STOP]: STOP, [RUNNING]: STOP, [PRE_COPY]: STOP, [PRE_COPY_P2P]: STOP,
    [STOP_COPY]: STOP, [RESUMING]: RESUMING, [RUNNING_P2P]: STOP, [ERROR]: ERROR,
  },
  [RUNNING_P2P]: {
    [STOP]: STOP, [RUNNING]: RUNNING, [PRE_COPY]: RUNNING, [PRE_COPY_P2P]: PRE_COPY_P2P,
    [STOP_COPY]: STOP, [RESUMING]: STOP, [RUNNING_P2P]: RUNNING_P2P, [ERROR]: ERROR,
  },
  [ERROR]: {
    [STOP]: ERROR, [RUNNING]: ERROR, [PRE_COPY]: ERROR, [PRE_COPY_P2P]: ERROR,
    [STOP_COPY]: ERROR, [RESUMING]: ERROR, [RUNNING_P2P]: ERROR, [ERROR]: ERROR,
  },
};

/** state_flags_table: the migration flags a state needs. ERROR needs every bit, so it is never "supported". */
const REQUIRED_FLAGS: Record<MigState, number> = {
  [STOP]: MigFlag.STOP_COPY,
  [RUNNING]: MigFlag.STOP_COPY,
  [PRE_COPY]: MigFlag.STOP_COPY | MigFlag.PRE_COPY,
  [PRE_COPY_P2P]: MigFlag.STOP_COPY | MigFlag.P2P | MigFlag.PRE_COPY,
  [STOP_COPY]: MigFlag.STOP_COPY,
  [RESUMING]: MigFlag.STOP_COPY,
  [RUNNING_P2P]: MigFlag.STOP_COPY | MigFlag.P2P,
  [ERROR]: ~0 >>> 0,
};

/** True when a device with these migration flags supports state `s` (ERROR never counts). */
export function supportsState(flags: number, s: number): boolean {
  if (!isState(s)) return false;
  const need = REQUIRED_FLAGS[s];
  return ((need & flags) >>> 0) === need;
}

/** States a SET can reach with these flags (besides ERROR after a failure). */
export function reachableStates(flags: number): MigState[] {
  return ALL_STATES.filter((s) => supportsState(flags, s));
}

/**
 * The next arc the kernel takes from `cur` towards `target`, exactly as
 * vfio_mig_get_next_state(): EINVAL (FsmError) for an unsupported current state
 * (the kernel also WARNs), an unsupported or out-of-range target, ERROR as a target,
 * and the blocked STOP_COPY -> PRE_COPY* requests. Callers never ask with cur == target
 * (drivers loop `while (cur != target)`); see path().
 */
export function nextStep(flags: number, cur: number, target: number): MigState {
  if (!supportsState(flags, cur)) {
    throw new FsmError(flags, cur, target, `current state ${stateName(cur)} is not supported by the device's flags`);
  }
  if (!isState(target)) {
    throw new FsmError(flags, cur, target, `target ${target} is not a state (valid: 0..${STATE_COUNT - 1})`);
  }
  if (!supportsState(flags, target)) {
    throw new FsmError(
      flags,
      cur,
      target,
      target === ERROR ? 'ERROR can never be requested' : `target ${stateName(target)} is not supported by the device's flags`,
    );
  }
  let next = NEXT_STEP[cur as MigState][target];
  // Skip optional states the device lacks; stop at the ERROR sentinel (the 6.12.117 guard).
  while (next !== ERROR && !supportsState(flags, next)) next = NEXT_STEP[next][target];
  if (next === ERROR) {
    throw new FsmError(flags, cur, target, `no arc leads from ${stateName(cur)} to ${stateName(target)} (a saving session cannot go back to PRE_COPY)`);
  }
  return next;
}

/**
 * Every state the device visits on a SET from `cur` to `target`, in order, excluding
 * `cur`. Empty when cur == target: the kernel returns 0 without calling the helper,
 * even for ERROR -> ERROR or states the flags do not support.
 */
export function path(flags: number, cur: number, target: number): MigState[] {
  const steps: MigState[] = [];
  let at = cur;
  while (at !== target) {
    at = nextStep(flags, at, target);
    steps.push(at);
    if (steps.length > STATE_COUNT) throw new InternalError(`FSM table loops from ${stateName(cur)} to ${stateName(target)}`);
  }
  return steps;
}

/** The four arcs that open a new data_fd (saving or resuming). */
export function opensDataFd(from: MigState, to: MigState): boolean {
  return (
    (from === RUNNING && to === PRE_COPY) ||
    (from === RUNNING_P2P && to === PRE_COPY_P2P) ||
    (from === STOP && to === STOP_COPY) ||
    (from === STOP && to === RESUMING)
  );
}

/** States in which the device runs (it may change its own state): RUNNING, RUNNING_P2P, PRE_COPY*. */
export function isRunningState(s: MigState): boolean {
  return s === RUNNING || s === RUNNING_P2P || s === PRE_COPY || s === PRE_COPY_P2P;
}

/** True when the arc stops a running device (where a driver takes its final dirty state). */
export function stopsDevice(from: MigState, to: MigState): boolean {
  return isRunningState(from) && !isRunningState(to);
}

/** States whose data session a data_fd belongs to: the saving group and RESUMING. */
export function isSavingState(s: MigState): boolean {
  return s === PRE_COPY || s === PRE_COPY_P2P || s === STOP_COPY;
}

export function hasDataSession(s: MigState): boolean {
  return isSavingState(s) || s === RESUMING;
}

/** True when the arc leaves a data session (saving group or RESUMING): its data_fd hits EOF/ENODEV. */
export function endsSession(from: MigState, to: MigState): boolean {
  if (from === RESUMING) return to !== RESUMING;
  return isSavingState(from) && !isSavingState(to);
}

export interface Transition {
  readonly from: MigState;
  readonly to: MigState;
  /** Every state visited after `from`, in order. */
  readonly path: readonly MigState[];
  /** The SET returns a new data_fd (its last arc opens a session). */
  readonly dataFd: boolean;
  /** An open data session ends somewhere along the path. */
  readonly endsSession: boolean;
}

/** path() plus which data sessions it opens and ends. Throws FsmError like the kernel. */
export function transition(flags: number, from: number, to: number): Transition {
  const steps = path(flags, from, to);
  let prev = from as MigState;
  let ends = false;
  for (const s of steps) {
    if (endsSession(prev, s)) ends = true;
    prev = s;
  }
  const last = steps.length ? (steps.length > 1 ? steps[steps.length - 2]! : (from as MigState)) : undefined;
  const dataFd = last !== undefined && opensDataFd(last, steps[steps.length - 1]!);
  return { from: from as MigState, to: to as MigState, path: steps, dataFd, endsSession: ends };
}
