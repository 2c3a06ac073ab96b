// Synchronous syscall helpers (pipes, socketpairs, fcntl, ioctl, close) for
// setup code and tests; the data path uses IoEngine instead.
import { SysError } from '../errors.js';
import { addon } from './addon.js';

function check(op: string, rc: number, fd?: number): number {
  if (rc < 0) throw new SysError(op, -rc, undefined, fd === undefined ? {} : { fd });
  return rc;
}

function pair(op: string, r: [number, number] | number): [number, number] {
  if (typeof r === 'number') throw new SysError(op, -r);
  return [r[0], r[1]];
}

/** pipe2(O_CLOEXEC): [readFd, writeFd]. */
export function pipe(): [readFd: number, writeFd: number] {
  return pair('pipe2', addon().pipe());
}

/** socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC). */
export function socketpair(): [number, number] {
  return pair('socketpair', addon().socketpair());
}

/** fcntl(F_SETPIPE_SZ): returns the size the kernel actually set. */
export function setPipeSize(fd: number, bytes: number): number {
  return check('fcntl(F_SETPIPE_SZ)', addon().setPipeSize(fd, bytes), fd);
}

/** Sets or clears O_NONBLOCK on the open file description. */
export function setNonBlocking(fd: number, on: boolean): void {
  check('fcntl(O_NONBLOCK)', addon().setNonBlocking(fd, on), fd);
}

/**
 * ioctl(fd, request, arg) on the calling thread. A Buffer arg is passed as a
 * pointer (in/out: the kernel may write into it); a number is passed as is.
 * Returns ioctl's non-negative result or throws SysError(op 'ioctl').
 */
export function ioctlSync(fd: number, request: number, arg: Buffer | number | null): number {
  return check('ioctl', addon().ioctl(fd, request, arg), fd);
}

export function closeSync(fd: number): void {
  check('close', addon().close(fd), fd);
}

/**
 * One sendmsg of `bytes` on the unix socket `socketFd` carrying `fd` (SCM_RIGHTS); the
 * receiver gets its own copy of `fd`. Returns how many bytes went (at least one, which
 * carried the fd); the caller sends any rest as ordinary bytes.
 */
export function sendWithFd(socketFd: number, bytes: Buffer, fd: number): number {
  return check('sendmsg(SCM_RIGHTS)', addon().sendWithFd(socketFd, bytes, fd), socketFd);
}

export interface SocketInfo {
  /** AF_UNIX, AF_INET, AF_INET6 (os.constants has no AF_*: see SOCKET_FAMILY). */
  family: number;
  /** SOCK_STREAM, SOCK_DGRAM, ... */
  type: number;
  /** listen() was called on it (SO_ACCEPTCONN). */
  listening: boolean;
  /** TCP_NODELAY (false on a non-TCP socket). */
  noDelay: boolean;
}

/** Linux values of the socket constants Node does not export. */
export const SOCKET_FAMILY = { unix: 1, inet: 2, inet6: 10 } as const;
export const SOCK_STREAM = 1;

/** getsockopt(SO_DOMAIN, SO_TYPE, SO_ACCEPTCONN, TCP_NODELAY); SysError ENOTSOCK when `fd` is not a socket. */
export function socketInfo(fd: number): SocketInfo {
  const r = addon().socketInfo(fd);
  if (typeof r === 'number') throw new SysError('getsockopt', -r, undefined, { fd });
  return { family: r[0], type: r[1], listening: r[2], noDelay: r[3] };
}
