// Where a saved stream goes: a file (written under a temporary name and renamed only when
// complete, so a failed save never leaves a file that looks complete), an fd handed in,
// or a unix socket.
import { promises as fsp } from 'node:fs';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { MigbridgeError } from '../errors.js';
import { temporaryNameFor } from '../util/atomic-file.js';
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

export async function openSink(target: SinkTarget): Promise<ByteSink> {
  if ('file' in target) {
    const final = path.resolve(target.file);
    const temp = temporaryNameFor(final);
    const fd = fs.openSync(temp, 'w', 0o644);
    let closed = false;
    const close = () => {
      if (!closed) {
        closed = true;
        fs.closeSync(fd);
      }
    };
    return new FdSink(
      final,
      fd,
      async () => {
        fs.fsyncSync(fd);
        close();
        await fsp.rename(temp, final);
      },
      async () => {
        close();
        await fsp.rm(temp, { force: true });
      },
    );
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
