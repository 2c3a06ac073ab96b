// What `migbridge check` reports: one result per checked item, grouped by area. The JSON
// form of a report is exactly {devices, results, findings}; each result carries
// {group, item, status, expected, observed, evidence}.
import type { MigrationDevice } from '../vfio/device.js';

export const CHECK_GROUPS = ['fsm', 'data_fd', 'sizes', 'resume', 'timing'] as const;
export type CheckGroup = (typeof CHECK_GROUPS)[number];

/** pass: the device did what the uAPI (and QEMU) expect; finding: it did not; n/a: the item could not apply or could not be reached. */
export type CheckStatus = 'pass' | 'finding' | 'n/a';

/** Evidence of one item: the device it ran on, and what was issued and read back (ioctl, bytes, errno, state). */
export type Evidence = { device: string } & Record<string, unknown>;

export interface CheckResult {
  group: CheckGroup;
  item: string;
  status: CheckStatus;
  /** What the uAPI or QEMU expects. */
  expected: string;
  /** What the device did. */
  observed: string;
  evidence: Evidence;
}

export interface CheckedDevice {
  spec: string;
  id: string;
  kind: string;
  /** VFIO_MIGRATION_* flags, when they could be read. */
  flags?: number;
  /** The state found when the check opened the device. */
  state?: string;
}

export interface CheckReport {
  devices: CheckedDevice[];
  results: CheckResult[];
  /** Number of results with status "finding". */
  findings: number;
}

/** Why a finding matters for a migration, one sentence per item kind (printed by the human report). */
export type WhyTable = Readonly<Record<string, string>>;

export interface CheckOptions {
  /** Device specs, as openDevice() takes them; the second one is the resume destination. */
  devices: readonly string[];
  /** Run the items that change device state (every group but the read-only items). */
  destructive: boolean;
  /** Groups to run (default all). */
  only?: readonly CheckGroup[];
  /** Bound on each data_fd read or write, so a hung device fails an item instead of the run (default 10 s). */
  ioTimeoutMs?: number;
  /** SETs measured per arc in the timing group (default 20). */
  timingRepeats?: number;
  /** Largest STOP_COPY stream buffered to compare streams (default 256 MiB). */
  maxStreamBytes?: number;
  /** Stops the run between items (Ctrl-C); touched devices are reset before run() rejects. */
  signal?: AbortSignal;
  /** Called with each result as it is decided (progress). */
  onResult?: (r: CheckResult) => void;
  /** Opens a spec (default openDevice); tests pass their own to look at the devices afterwards. */
  open?: (spec: string) => Promise<MigrationDevice>;
}
