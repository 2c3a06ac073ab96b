// Where a saved stream goes: a file (an OutputFile: written under an unpredictable temporary
// name, 0600, fsync'd and renamed only when complete, so a failed save never leaves a file
// that looks complete), an fd handed in, or a unix socket.
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { MigbridgeError } from '../errors.js';
import { OutputFile, outputFileError } from '../util/atomic-file.js';
import { connectUnixWhenListening } from '../util/unix-connect.js';

/** A QEMU started beside `save --to unix:` may not listen yet: wait this long for it. */
const UNIX_CONNECT_WAIT_MS = 3000;

export interface ByteSink {
  readonly description: string;
  /** Resolves once `data` may be reused (backpressure). */
  write(data: Buffer): Promise<void>;
  /** Everything written: make it durable and visible under its final name. */
  commit(): Promise<void>;
  /** The save failed: remove partial output where possible. */
  abort(): Promise<void>;
  bytesWritten(): number;
}

export type SinkTarget = { file: string } | { fd: number } | { unix: string };

export class SinkError extends MigbridgeError {}

class FdSink implements ByteSink {
  private written = 0;
  constructor(
    readonly description: string,
    private readonly fd: number,
    private readonly onCommit: () => Promise<void>,
    private readonly onAbort: () => Promise<void>,
  ) {}
  async write(data: Buffer): Promise<void> {
    let off = 0;
    while (off < data.length) {
      const n = await new Promise<number>((resolve, reject) =>
        fs.write(this.fd, data, off, data.length - off, null, (err, written) => (err ? reject(err) : resolve(written))),
      );
      off += n;
    }
    this.written += data.length;
  }
  commit(): Promise<void> {
    return this.onCommit();
  }
  abort(): Promise<void> {
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

/** A file sink whose failed writes name the user's path and the reason (ENOSPC, EIO, ...). */
function withOutputErrors(sink: ByteSink, userPath: string): ByteSink {
  return {
    description: sink.description,
    write: (data) => sink.write(data).catch((e: unknown) => { throw outputFileError(e, userPath); }),
    commit: () => sink.commit(),
    abort: () => sink.abort(),
    bytesWritten: () => sink.bytesWritten(),
  };
}

export async function openSink(target: SinkTarget): Promise<ByteSink> {
  if ('file' in target) {
    const file = await OutputFile.create(target.file);
    return withOutputErrors(new FdSink(path.resolve(target.file), file.fd, () => file.commit(), () => file.abort()), target.file);
  }
  if ('fd' in target) {
    return new FdSink(`fd ${target.fd}`, target.fd, async () => {}, async () => {});
  }
  let socket: net.Socket;
  try {
    socket = await connectUnixWhenListening(target.unix, { waitMs: UNIX_CONNECT_WAIT_MS });
  } catch (e) {
    throw new SinkError('ECONNREFUSED', `cannot connect to unix:${target.unix}: ${(e as Error).message}`, { cause: e });
  }
  return new SocketSink(`unix:${target.unix}`, socket);
}
