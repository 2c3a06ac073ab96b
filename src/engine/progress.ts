// What save and restore tell a progress display: one counter per device, updated in place
// as bytes move, and a stop when the transfer ends. Drawing them is the CLI's business
// (src/cli/progress.ts); the engine only counts.

export interface ProgressCounter {
  readonly id: string;
  /** Bytes written out (to the stream on save, to the device on restore). */
  bytes: number;
  /**
   * Bytes read from the device so far (save only): ahead of `bytes` while the device's data
   * waits in the pool for its turn in the stream (QEMU framing writes one device at a time).
   */
  read?: number;
  /** Expected total, when known (stop-copy size estimate, or the stream's section size). */
  total?: number;
  done: boolean;
  failed?: string;
}

/** Where save/restore register their counters (`progress` in their options). */
export interface ProgressSink {
  /** A new counter for device `id`, with its expected total when known. */
  counter(id: string, total?: number): ProgressCounter;
  /** The transfer ended (success or not): no counter changes after this. */
  stop(): void;
}
