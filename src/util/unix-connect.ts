// Connecting to a unix socket that a just-started peer (QEMU's -incoming or QMP socket) is
// about to serve. QEMU bind()s before it listen()s, so for a moment the socket file exists yet
// a connect gets ECONNREFUSED; before the bind the file is missing (ENOENT). Both mean "not
// listening yet" and are retried until the wait runs out; any other error is final.
import * as net from 'node:net';
import { unixSocketPath } from './unix-listen.js';

const NOT_YET_LISTENING = new Set(['ENOENT', 'ECONNREFUSED', 'EAGAIN']);

export interface UnixConnectOptions {
  /** How long to keep retrying while the peer is not listening yet, in ms (0: one try). */
  waitMs: number;
  /** Keep our side writable after the peer ends its side (the proxy forwards half-closes). */
  allowHalfOpen?: boolean;
}

function connectOnce(path: string, allowHalfOpen: boolean): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ path: unixSocketPath(path), allowHalfOpen });
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
export async function connectUnixWhenListening(path: string, opts: UnixConnectOptions): Promise<net.Socket> {
  const deadline = performance.now() + opts.waitMs;
  for (let delay = 20; ; delay = Math.min(delay * 2, 250)) {
    try {
      return await connectOnce(path, opts.allowHalfOpen ?? false);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code ?? '';
      if (!NOT_YET_LISTENING.has(code) || performance.now() + delay > deadline) throw e;
      await new Promise((r) => setTimeout(r, delay));
    }
  }
}
