// What `migrate` reports: per side QEMU's version, migration status, error text and final
// runstate; timings as QEMU reports them and downtime as seen on the wire (with the proxy);
// VFIO bytes per device (from the proxy's decode) and in total (QEMU's own count).
import type { ProxyReport } from '../engine/proxy.js';

export interface SideReport {
  /** QMP socket. */
  qmp: string;
  version: string;
  /** query-migrate status at the end (completed, failed, cancelled, ...), or null when QEMU could not be asked. */
  migration: string | null;
  /** QEMU's own error text (query-migrate error-desc, or why QEMU could not be asked). */
  error: string | null;
  /** query-status at the end, or null when QEMU is gone. */
  runState: string | null;
  /** What migbridge did to this side after a failure ("migrate_cancel", "quit"). */
  action: string | null;
}

export interface VfioDeviceBytes {
  idstr: string;
  dataBytes: number;
  precopyBytes: number;
  stopCopyBytes: number;
}

export interface MigrateReport {
  ok: boolean;
  /** The URI the source migrated to, and what the destination listened on. */
  uri: string;
  incoming: string;
  capabilities: Record<string, boolean>;
  parameters: Record<string, unknown>;
  source: SideReport;
  destination: SideReport;
  /** QEMU's total-time, downtime and setup-time (ms) from the source's query-migrate. */
  totalTimeMs: number | null;
  downtimeMs: number | null;
  setupTimeMs: number | null;
  /** Wall-clock time migbridge saw from `migrate` to the end of both sides (ms). */
  wallTimeMs: number;
  /**
   * With the proxy: from the first section sent after the source stopped (the first END
   * section) to the EOF record, on the wire (ms).
   */
  wireDowntimeMs: number | null;
  /** Bytes QEMU counted as RAM transferred, and as VFIO device data (QEMU 8.1+). */
  ramBytes: number | null;
  vfioBytes: number | null;
  passes: number;
  /** VFIO device data per device, decoded by the proxy (empty without it). */
  vfio: VfioDeviceBytes[];
  proxy: ProxyReport | null;
  /** A signal that came too late to cancel: what it was and that the migration completed. */
  interrupted: string | null;
  failure: { side: 'source' | 'destination' | 'migbridge'; message: string } | null;
}
