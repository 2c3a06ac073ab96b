// One progress sample of a running migration, from the source's query-migrate (the CLI
// draws it: src/cli/migrate-progress.ts).

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
