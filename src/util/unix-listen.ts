// Listening on a unix socket path, and nothing else:
//  - the endpoint is always a path: Node's listen() takes a string that parses as a number
//    ("4444", "0x115c") as a TCP port on every interface, so a relative path is spelled
//    "./PATH" (never numeric) before it reaches Node;
//  - the socket file is 0600 whatever the umask: the umask is narrowed around listen(),
//    which binds synchronously, so no moment exists where another user could connect;
//    `mode` widens it afterwards on request;
//  - something already at the path is refused, unless it is a socket nobody listens on any
//    more (a stale one from a killed run), which is removed.
import { promises as fsp } from 'node:fs';
import * as net from 'node:net';
import { isAbsolute } from 'node:path';
import { MigbridgeError } from '../errors.js';

/** Sockets let whoever may write them drive a migration: owner only unless widened. */
export const SOCKET_MODE = 0o600;

export class UnixListenError extends MigbridgeError {}

/** The spelling of `path` that Node's net module can only take as a unix socket path. */
export function unixSocketPath(path: string): string {
  return isAbsolute(path) || path.startsWith('./') || path.startsWith('../') ? path : `./${path}`;
}

/** Refuses what is at `path` unless nothing is, or a stale socket (removed). */
async function clearStaleSocket(path: string): Promise<void> {
  const st = await fsp.lstat(path).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return undefined;
    throw new UnixListenError(e.code ?? 'EIO', `cannot listen on unix:${path}: ${e.message}`, { path, cause: e });
  });
  if (!st) return;
  if (!st.isSocket()) {
    throw new UnixListenError('EEXIST', `cannot listen on unix:${path}: it exists and is not a socket (refusing to replace it)`, { path });
  }
  const inUse = await new Promise<boolean>((resolve) => {
    const c = net.connect({ path: unixSocketPath(path) });
    c.once('connect', () => { c.destroy(); resolve(true); });
    c.once('error', () => resolve(false));
  });
  if (inUse) throw new UnixListenError('EADDRINUSE', `cannot listen on unix:${path}: something is listening there already`, { path });
  await fsp.unlink(path).catch(() => undefined);
}

/** Binds `server` to the unix socket `path` (0600, or `mode`) and resolves once it listens. */
export async function listenUnix(server: net.Server, path: string, mode: number = SOCKET_MODE): Promise<void> {
  if (path === '') throw new UnixListenError('EINVAL', 'cannot listen on an empty unix socket path', { path });
  await clearStaleSocket(path);
  await new Promise<void>((resolve, reject) => {
    const onError = (e: NodeJS.ErrnoException): void => reject(new UnixListenError(e.code ?? 'EIO', `cannot listen on unix:${path}: ${e.message}`, { path, cause: e }));
    server.once('error', onError);
    let oldMask: number | undefined;
    try {
      oldMask = process.umask(0o177);
    } catch {
      // Worker threads cannot change the umask: the chmod below still narrows the mode.
    }
    try {
      server.listen({ path: unixSocketPath(path) }, () => {
        server.off('error', onError);
        resolve();
      });
    } finally {
      if (oldMask !== undefined) process.umask(oldMask);
    }
  });
  try {
    await fsp.chmod(path, mode);
  } catch (e) {
    server.close();
    throw new UnixListenError((e as NodeJS.ErrnoException).code ?? 'EIO', `cannot set the mode of unix:${path}: ${(e as Error).message}`, { path, cause: e });
  }
}
