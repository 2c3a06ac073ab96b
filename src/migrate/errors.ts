// Typed failures of `migrate`: refused before anything changed (EMIGRATE_REFUSED: a
// capability one side lacks, a destination not waiting for a migration), or failed once
// started (EMIGRATE_FAILED with the report of both sides; EMIGRATE_CANCELLED on a signal).
import { MigbridgeError } from '../errors.js';
import type { MigrateReport } from './report.js';

export class MigrateRefusedError extends MigbridgeError {
  constructor(message: string, readonly side?: 'source' | 'destination') {
    super('EMIGRATE_REFUSED', message);
  }
  override toJSON(): Record<string, unknown> {
    return { ...super.toJSON(), ...(this.side ? { side: this.side } : {}) };
  }
}

export class MigrateFailedError extends MigbridgeError {
  constructor(readonly report: MigrateReport, code: 'EMIGRATE_FAILED' | 'EMIGRATE_CANCELLED', message: string, cause?: unknown) {
    super(code, message, cause === undefined ? {} : { cause });
  }
  override toJSON(): Record<string, unknown> {
    return { ...super.toJSON(), failure: this.report.failure };
  }
}
