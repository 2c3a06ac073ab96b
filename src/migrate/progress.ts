// One progress sample of a running migration, from the source's query-migrate, and its two
// renderings: a one-line bar for a terminal, a JSON line otherwise.
import { formatBytes, formatRate } from '../engine/progress.js';

export interface MigrateProgress {
  status: string;
  elapsedMs: number;
  /** RAM bytes sent so far and still to send; total RAM. */
  transferred: number;
  remaining: number;
  total: number;
  /** Dirty-bitmap syncs so far (QEMU's pass count). */
  pass: number;
  /** Bytes the guest dirties per second, as QEMU last measured it. */
  dirtyRate: number;
  /** QEMU's expected downtime (ms), once it has one. */
  expectedDowntimeMs: number | null;
  /** VFIO device bytes sent so far (QEMU 8.1+ reports them). */
  vfioBytes: number;
}

export interface QueryMigrate {
  status?: string;
  'total-time'?: number;
  downtime?: number;
  'setup-time'?: number;
  'expected-downtime'?: number;
  'error-desc'?: string;
  ram?: { transferred?: number; remaining?: number; total?: number; 'dirty-sync-count'?: number; 'dirty-pages-rate'?: number; 'page-size'?: number };
  vfio?: { transferred?: number };
}

export function progressOf(q: QueryMigrate, elapsedMs: number): MigrateProgress {
  const ram = q.ram ?? {};
  return {
    status: q.status ?? 'unknown',
    elapsedMs: Math.round(elapsedMs),
    transferred: ram.transferred ?? 0,
    remaining: ram.remaining ?? 0,
    total: ram.total ?? 0,
    pass: ram['dirty-sync-count'] ?? 0,
    dirtyRate: (ram['dirty-pages-rate'] ?? 0) * (ram['page-size'] ?? 4096),
    expectedDowntimeMs: q['expected-downtime'] ?? null,
    vfioBytes: q.vfio?.transferred ?? 0,
  };
}

const BAR = 24;

export function progressBar(p: MigrateProgress): string {
  const done = p.total > 0 ? Math.min(1, (p.total - p.remaining) / p.total) : 0;
  const fill = Math.round(done * BAR);
  return `[${'#'.repeat(fill)}${'.'.repeat(BAR - fill)}] ${p.status} ${formatBytes(p.transferred)} sent, ${formatBytes(p.remaining)} left, pass ${p.pass}, dirty ${formatRate(p.dirtyRate)}` +
    `${p.expectedDowntimeMs !== null ? `, expected downtime ${p.expectedDowntimeMs} ms` : ''}${p.vfioBytes ? `, vfio ${formatBytes(p.vfioBytes)}` : ''} (${(p.elapsedMs / 1000).toFixed(1)} s)`;
}

export function progressJson(p: MigrateProgress): string {
  return JSON.stringify({ progress: p });
}
