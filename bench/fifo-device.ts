// The bench's device models (a) and (b): "as fast as memory, producers as cheap as the C
// limit's" (and the same with a per-MiB latency). A minimal MigrationDevice whose STOP_COPY
// data_fd is the read end of a named pipe fed by `cbench produce` (C threads writing one
// prefilled 1 MiB buffer, the limit's own producers), and whose RESUMING data_fd is the
// write end of a named pipe drained by `cbench drain`. The producers stay out of the
// measured process, unlike the simulator, whose verifying content generator runs in worker
// threads of the process under test (that one is what the tests use). No FSM rules: the
// bench only walks RUNNING -> STOP_COPY -> STOP and RUNNING -> RESUMING -> RUNNING.
import { closeSync, openSync } from 'node:fs';
import { MigFlag, MigState } from '../src/fsm/index.js';
import type { DataFd, MigrationDevice, PrecopyInfo, RegionInfoSummary } from '../src/vfio/device.js';

class FifoDataFd implements DataFd {
  closed = false;
  constructor(
    readonly fd: number,
    readonly direction: 'save' | 'resume',
    readonly device: string,
  ) {}
  async verifyEnd(): Promise<void> {}
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    closeSync(this.fd);
  }
}

export class FifoDevice implements MigrationDevice {
  readonly kind = 'sim' as const;
  #state = MigState.RUNNING;
  constructor(
    readonly id: string,
    /** Named pipe: its writer is a producer (save) or its reader a drainer (restore). */
    private readonly fifo: string,
    private readonly size: number,
  ) {}
  async migrationFlags(): Promise<number> {
    return MigFlag.STOP_COPY | MigFlag.P2P;
  }
  async state(): Promise<MigState> {
    return this.#state;
  }
  async setState(target: MigState): Promise<DataFd | null> {
    this.#state = target;
    // The open blocks until the other process opened its end (both are started first).
    if (target === MigState.STOP_COPY) return new FifoDataFd(openSync(this.fifo, 'r'), 'save', this.id);
    if (target === MigState.RESUMING) return new FifoDataFd(openSync(this.fifo, 'w'), 'resume', this.id);
    return null;
  }
  async precopyInfo(): Promise<PrecopyInfo> {
    throw new Error('no PRE_COPY on bench devices');
  }
  async stopCopySize(): Promise<bigint> {
    return BigInt(this.size);
  }
  async reset(): Promise<void> {
    this.#state = MigState.RUNNING;
  }
  async regionInfo(): Promise<RegionInfoSummary> {
    throw new Error('no regions on bench devices');
  }
  async regionRead(): Promise<Buffer> {
    throw new Error('no regions on bench devices');
  }
  async regionWrite(): Promise<void> {
    throw new Error('no regions on bench devices');
  }
  async close(): Promise<void> {}
}
