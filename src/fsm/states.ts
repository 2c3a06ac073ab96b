// VFIO migration uAPI values (include/uapi/linux/vfio.h, Linux 6.12.117).
import { Errno } from '../errno.js';
import { MigbridgeError } from '../errors.js';

/** enum vfio_device_mig_state */
export enum MigState {
  ERROR = 0,
  STOP = 1,
  RUNNING = 2,
  STOP_COPY = 3,
  RESUMING = 4,
  RUNNING_P2P = 5,
  PRE_COPY = 6,
  PRE_COPY_P2P = 7,
}

/** VFIO_DEVICE_STATE_NR: first value that is not a state. */
export const STATE_COUNT = 8;

/** VFIO_MIGRATION_* bits of vfio_device_feature_migration.flags */
export enum MigFlag {
  STOP_COPY = 1 << 0,
  P2P = 1 << 1,
  PRE_COPY = 1 << 2,
}

export const ALL_STATES: readonly MigState[] = [0, 1, 2, 3, 4, 5, 6, 7];

/** Kernel's EINVAL, the only errno vfio_mig_get_next_state() returns (Errno.EINVAL; kept for the fsm namespace). */
export const EINVAL = Errno.EINVAL;

export class FsmError extends MigbridgeError<'EINVAL'> {
  readonly from: number;
  readonly to: number;
  readonly flags: number;
  constructor(flags: number, from: number, to: number, why: string) {
    super('EINVAL', `cannot go from ${stateName(from)} to ${stateName(to)} with migration flags ${flagsName(flags)}: ${why}`, {
      errno: EINVAL,
    });
    this.from = from;
    this.to = to;
    this.flags = flags;
  }
}

export function isState(n: number): n is MigState {
  return Number.isInteger(n) && n >= 0 && n < STATE_COUNT;
}

/** Name as in the uAPI enum without the VFIO_DEVICE_STATE_ prefix; out-of-range values as "STATE(n)". */
export function stateName(s: number): string {
  return isState(s) ? MigState[s] : `STATE(${s})`;
}

export function parseState(name: string): MigState {
  const key = name.trim().toUpperCase().replace(/-/g, '_');
  const v = (MigState as unknown as Record<string, number>)[key];
  if (v === undefined || typeof v !== 'number') {
    if (/^\d+$/.test(key)) return Number(key) as MigState;
    throw new MigbridgeError('EUSAGE', `unknown migration state ${JSON.stringify(name)} (one of ${ALL_STATES.map(stateName).join(', ')})`);
  }
  return v;
}

const FLAG_NAMES: readonly [MigFlag, string][] = [
  [MigFlag.STOP_COPY, 'stop-copy'],
  [MigFlag.P2P, 'p2p'],
  [MigFlag.PRE_COPY, 'pre-copy'],
];

export function flagsName(flags: number): string {
  const names = FLAG_NAMES.filter(([bit]) => flags & bit).map(([, n]) => n);
  const rest = flags & ~7;
  if (rest) names.push(`0x${rest.toString(16)}`);
  return `${names.length ? names.join(',') : 'none'} (0x${flags.toString(16)})`;
}

/** Parses "stop-copy,p2p,pre-copy" (also upper case / underscores) or a number like "7" or "0x7". */
export function parseFlags(text: string): number {
  const t = text.trim();
  if (/^(0x[0-9a-f]+|\d+)$/i.test(t)) return Number(t);
  let flags = 0;
  for (const part of t.split(',').map((p) => p.trim().toLowerCase().replace(/_/g, '-')).filter(Boolean)) {
    const hit = FLAG_NAMES.find(([, n]) => n === part || n.replace('-', '') === part);
    if (!hit) throw new MigbridgeError('EUSAGE', `unknown migration flag ${JSON.stringify(part)} (stop-copy, p2p, pre-copy or a number)`);
    flags |= hit[0];
  }
  return flags;
}
