// Connecting to a socket that a just-started peer (QEMU's -incoming or QMP socket) is
// about to serve. QEMU bind()s before it listen()s, so for a moment a unix socket file exists
// yet a connect gets ECONNREFUSED; before the bind the file is missing (ENOENT); a tcp port
// nobody listens on yet refuses too. These mean "not listening yet" and are retried until the
// wait runs out; any other error is final.
import * as net from 'node:net';
import { unixSocketPath } from './unix-listen.js';

const NOT_YET_LISTENING = new Set(['ENOENT', 'ECONNREFUSED', 'EAGAIN']);

export interface UnixConnectOptions {
  /** How long to keep retrying while the peer is not listening yet, in ms (0: one try). */
  waitMs: number;
  /** Keep our side writable after the peer ends its side (the proxy forwards half-closes). */
  allowHalfOpen?: boolean;
}

function connectOnce(to: net.NetConnectOpts): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(to);
    s.once('error', (e) => {
      s.destroy();
      reject(e);
    });
    s.once('connect', () => {
      s.removeAllListeners('error');
      resolve(s);
    });
  });
}

/** Connects to `path`, retrying (20 ms doubling to 250 ms) while the peer is not listening yet. */
export function connectUnixWhenListening(path: string, opts: UnixConnectOptions): Promise<net.Socket> {
  return connectWhenListening({ path: unixSocketPath(path), allowHalfOpen: opts.allowHalfOpen ?? false }, opts.waitMs);
}

/** Connects to `to` (a unix path or a tcp host and port), retrying while the peer is not listening yet. */
export async function connectWhenListening(to: net.NetConnectOpts, waitMs: number): Promise<net.Socket> {
  const deadline = performance.now() + waitMs;
  for (let delay = 20; ; delay = Math.min(delay * 2, 250)) {
    try {
      return await connectOnce(to);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code ?? '';
      if (!NOT_YET_LISTENING.has(code) || performance.now() + delay > deadline) throw e;
      await new Promise((r) => setTimeout(r, delay));
    }
  }
}
