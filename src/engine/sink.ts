// Where a saved stream goes: a file (an OutputFile: written under an unpredictable temporary
// name, 0600, fsync'd and renamed only when complete, so a failed save never leaves a file
// that looks complete), an fd handed in, or an endpoint (unix:, tcp:, fd:) connected to.
import * as net from 'node:net';
import * as path from 'node:path';
import { MigbridgeError, errorCode } from '../errors.js';
import { defaultEngine, type IoEngine } from '../native/index.js';
import { OutputFile } from '../util/atomic-file.js';
import { type Endpoint, connectEndpoint, formatEndpoint, inspectFd, socketFd } from '../util/endpoint.js';

/** A QEMU started beside `save --to` may not listen yet: wait this long for it. */
const CONNECT_WAIT_MS = 3000;

export interface ByteSink {
  readonly description: string;
  /** Takes `data` (the caller does not touch it again); resolves when the caller may go on (backpressure). */
  write(data: Buffer): Promise<void>;
  /** Zero-copy record write: `done` is called once the sink no longer needs `bufs` (see the qemu ByteSink). */
  writeOwned?(bufs: Buffer[], done: () => void): Promise<void>;
  /** Everything written: make it durable and visible under its final name. */
  commit(): Promise<void>;
  /** The save failed: remove partial output where possible. */
  abort(): Promise<void>;
  bytesWritten(): number;
  /** The path the user named when the output is a file: failures name it (see guardSink). */
  readonly outputPath?: string;
}

export type SinkTarget = { file: string } | { fd: number } | { endpoint: Endpoint };

export class SinkError extends MigbridgeError {}

/** Writes in flight at once on a seekable output (each at its own explicit offset). */
const MAX_WRITES_IN_FLIGHT = 8;

/**
 * An open fd written through the io engine (the ring on io_uring): every record leaves as one
 * writev of the buffers handed over, without copying. On a seekable output each write carries
 * its explicit offset, so several are in flight at once; on a pipe or socket they go one
 * after another in order. The first failure is kept and thrown by later writes and commit().
 */
class FdSink implements ByteSink {
  private written = 0;
  private offset = 0;
  private inFlight = new Set<Promise<void>>();
  private tail: Promise<void> = Promise.resolve();
  private failure: unknown;
  constructor(
    readonly description: string,
    private readonly fd: number,
    /** The fd is a file we opened at offset 0: explicit offsets, writes in parallel. */
    private readonly seekable: boolean,
    private readonly io: IoEngine,
    private readonly onCommit: () => Promise<void>,
    private readonly onAbort: () => Promise<void>,
    readonly outputPath?: string,
  ) {}
  write(data: Buffer): Promise<void> {
    // StreamWriter hands over fresh buffers (it never reuses them): the same path as owned ones.
    return this.writeOwned([data], () => {});
  }
  async writeOwned(bufs: Buffer[], done: () => void): Promise<void> {
    if (this.failure !== undefined) {
      done();
      throw this.failure;
    }
    const length = bufs.reduce((s, b) => s + b.length, 0);
    const at = this.offset;
    this.offset += length;
    const run = (): Promise<void> =>
      // Queued behind a failed write on a stream: nothing after a gap may go out.
      this.failure !== undefined
        ? Promise.resolve(done())
        : this.io.writev(this.fd, bufs, this.seekable ? { offset: at } : {}).then(
        () => {
          this.written += length;
          done();
        },
        (e: unknown) => {
          this.failure ??= e;
          done();
        },
      );
    const op = this.seekable ? run() : (this.tail = this.tail.then(run));
    this.inFlight.add(op);
    void op.then(() => this.inFlight.delete(op));
    while (this.inFlight.size >= MAX_WRITES_IN_FLIGHT) await Promise.race(this.inFlight);
    if (this.failure !== undefined) throw this.failure;
  }
  /** Every write handed over has completed (or failed: then the first failure is thrown). */
  private async settle(): Promise<void> {
    while (this.inFlight.size) await Promise.all(this.inFlight);
    if (this.failure !== undefined) throw this.failure;
  }
  async commit(): Promise<void> {
    await this.settle();
    return this.onCommit();
  }
  async abort(): Promise<void> {
    // A write blocked on a peer that stopped reading never completes by itself: cancel what
    // is still pending on the fd (the output is being thrown away), then wait for the rest.
    if (this.inFlight.size) await this.io.cancel(this.fd).catch(() => 0);
    await this.settle().catch(() => {});
    return this.onAbort();
  }
  bytesWritten(): number {
    return this.written;
  }
}

class SocketSink implements ByteSink {
  private written = 0;
  constructor(readonly description: string, private readonly socket: net.Socket) {}
  write(data: Buffer): Promise<void> {
    return new Promise((resolve, reject) => {
      this.socket.write(data, (err) => (err ? reject(err) : resolve()));
      this.written += data.length;
    });
  }
  commit(): Promise<void> {
    return new Promise((resolve) => this.socket.end(resolve));
  }
  async abort(): Promise<void> {
    this.socket.destroy();
  }
  bytesWritten(): number {
    return this.written;
  }
}

export async function openSink(target: SinkTarget): Promise<ByteSink> {
  if ('file' in target) {
    const file = await OutputFile.create(target.file);
    return new FdSink(path.resolve(target.file), file.fd, true, defaultEngine(), () => file.commit(), () => file.abort(), target.file);
  }
  if ('fd' in target) return fdSink(`fd ${target.fd}`, target.fd);
  const text = formatEndpoint(target.endpoint);
  if (target.endpoint.kind === 'fd') return fdSink(text, target.endpoint.fd);
  let socket: net.Socket;
  try {
    socket = await connectEndpoint(target.endpoint, { what: '--to', waitMs: CONNECT_WAIT_MS });
  } catch (e) {
    if (e instanceof MigbridgeError) throw e;
    throw new SinkError(errorCode(e), `cannot connect to ${text}: ${(e as Error).message}`, { cause: e });
  }
  // The connected socket's fd goes through the io engine like any output (records as one
  // writev, no copy); libuv keeps the handle only to close it. SocketSink is the fallback
  // should the handle not expose its fd.
  const fd = socketFd(socket);
  if (fd !== undefined) {
    return new FdSink(
      text,
      fd,
      false,
      defaultEngine(),
      () => new Promise<void>((resolve) => socket.end(resolve)),
      async () => {
        socket.destroy();
      },
    );
  }
  return new SocketSink(text, socket);
}

/** An inherited fd (a pipe, socket or file opened by whoever started us), checked then written in order. */
function fdSink(description: string, fd: number): ByteSink {
  inspectFd(fd, '--to');
  return new FdSink(description, fd, false, defaultEngine(), async () => {}, async () => {});
}
