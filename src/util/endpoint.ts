// Endpoints: where a migration stream goes in or out, in QEMU's URI spelling, for every
// command (proxy --listen/--to, save --to, restore --from, the proxy's multifd channels):
//   unix:PATH          a unix socket (listening: 0600 unless widened, stale socket replaced)
//   tcp:HOST:PORT      IPv4 literal or host name; tcp:[ADDR]:PORT for an IPv6 literal
//   fd:N               an fd this process inherited (socket, pipe, or for streams a file)
// Listening binds only the address written: a name binds the first address it resolves to,
// and every interface (0.0.0.0, [::]) only when written so; there is no empty-host default.
// Port 0 lets the kernel choose a port (listening only); the bound endpoint reports it.
//
// Socket options, as QEMU sets them on its migration sockets (migration/multifd.c,
// migration/socket.c, io/channel-socket.c, util/qemu-sockets.c):
//  - TCP_NODELAY on each multifd channel it connects (qio_channel_set_delay(false)): multifd
//    packets are written whole and must not wait for the ACK of the previous one. The main
//    channel keeps Nagle (QEMU's stream is buffered into large writes anyway). `noDelay`
//    below is set by the proxy for its multifd connections only, for the same reason.
//  - No SO_SNDBUF/SO_RCVBUF: QEMU leaves the kernel's autotuning alone (a fixed size would
//    turn it off), and so do we.
//  - A listening IPv6 socket is IPv6 only (IPV6_V6ONLY), so tcp:[::]:P does not also take
//    IPv4 connections nobody asked for; SO_REUSEADDR is set by libuv, as QEMU sets it.
import { lookup } from 'node:dns/promises';
import { fstatSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import * as net from 'node:net';
import { MigbridgeError, UsageError, errnoNumber, errorCode } from '../errors.js';
import { SOCK_STREAM, socketInfo } from '../native/sys.js';
import { connectWhenListening } from './unix-connect.js';
import { SOCKET_MODE, listenUnix, unixSocketPath } from './unix-listen.js';

export type Endpoint =
  | { kind: 'unix'; path: string }
  | { kind: 'tcp'; host: string; port: number }
  | { kind: 'fd'; fd: number };

export const ENDPOINT_SYNTAX = 'unix:PATH, tcp:HOST:PORT, tcp:[IPV6]:PORT or fd:N';

/** An endpoint that cannot be used as written (a usage error: exit 2); `text` is what the user wrote. */
export class EndpointError extends UsageError {
  constructor(readonly text: string, message: string) {
    super(message);
  }
  override toJSON(): Record<string, unknown> {
    return { ...super.toJSON(), endpoint: this.text };
  }
}

/** Listening on, or connecting to, a well-formed endpoint failed (EADDRINUSE, ENOTFOUND, ...). */
export class EndpointSetupError extends MigbridgeError {}

// A name as DNS spells it; an all-numeric one is refused unless it is a dotted IPv4 address,
// since getaddrinfo would read "10.1" or "0x7f.1" as an address in inet_aton's old forms.
const HOST_NAME = /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$/;
const NUMERIC_HOST = /^(?:0x[0-9a-f]*|\d+)(?:\.(?:0x[0-9a-f]*|\d*))*$/i;

/** What the endpoint is for: port 0 is only for listening. */
export type EndpointUse = 'listen' | 'connect';

/** Parses `text` as an endpoint; `what` names where it was given (e.g. "--listen"). */
export function parseEndpoint(text: string, what: string, use: EndpointUse): Endpoint {
  const bad = (why: string): never => {
    throw new EndpointError(text, `${what} ${JSON.stringify(text)}: ${why} (an endpoint is ${ENDPOINT_SYNTAX})`);
  };
  const colon = text.indexOf(':');
  const rest = text.slice(colon + 1);
  switch (colon < 0 ? '' : text.slice(0, colon)) {
    case 'unix':
      if (rest === '') bad('the socket path is empty');
      if (rest.includes('\0')) bad('the socket path contains a NUL byte');
      return { kind: 'unix', path: rest };
    case 'tcp': {
      const ep = parseTcp(rest, bad);
      if (use === 'connect' && ep.port === 0) bad('port 0 can only be listened on');
      return ep;
    }
    case 'fd':
      if (!/^\d{1,10}$/.test(rest) || Number(rest) > 0x7fffffff) bad('fd: takes a file descriptor number');
      return { kind: 'fd', fd: Number(rest) };
    default:
      return bad('not an endpoint');
  }
}

function parseTcp(rest: string, bad: (why: string) => never): Endpoint & { kind: 'tcp' } {
  let host: string;
  let port: string;
  if (rest.startsWith('[')) {
    const close = rest.indexOf(']');
    if (close < 0 || rest[close + 1] !== ':') bad('an IPv6 address is written [ADDR]:PORT');
    host = rest.slice(1, close);
    port = rest.slice(close + 2);
    if (!net.isIPv6(host)) bad(`${JSON.stringify(host)} in brackets is not an IPv6 address`);
  } else {
    const c = rest.lastIndexOf(':');
    if (c < 0) bad('tcp: takes HOST:PORT');
    host = rest.slice(0, c);
    port = rest.slice(c + 1);
    if (host === '') bad('the host is missing (write the address: 0.0.0.0 or [::] for every interface)');
    if (host.includes(':')) bad('an IPv6 address goes in brackets: tcp:[ADDR]:PORT');
    if (!net.isIPv4(host) && (NUMERIC_HOST.test(host) || !HOST_NAME.test(host))) bad(`${JSON.stringify(host)} is neither an IPv4 address nor a host name`);
  }
  if (!/^\d{1,5}$/.test(port) || Number(port) > 65535) bad(`the port ${JSON.stringify(port)} is not a number from 0 to 65535`);
  return { kind: 'tcp', host, port: Number(port) };
}

/** The endpoint as a user writes it (reports, notes, errors). */
export function formatEndpoint(ep: Endpoint): string {
  switch (ep.kind) {
    case 'unix': return `unix:${ep.path}`;
    case 'tcp': return `tcp:${net.isIPv6(ep.host) ? `[${ep.host}]` : ep.host}:${ep.port}`;
    case 'fd': return `fd:${ep.fd}`;
  }
}

/** What an inherited fd is. */
export type InheritedFd =
  | { type: 'pipe' }
  | { type: 'file' }
  | { type: 'socket'; listening: boolean };

/**
 * Checks that `fd` is open in this process and is a pipe, a regular file or a stream socket
 * (a datagram socket, a terminal or a directory cannot carry a migration stream).
 */
export function inspectFd(fd: number, what: string): InheritedFd {
  const text = `fd:${fd}`;
  let st;
  try {
    st = fstatSync(fd);
  } catch (e) {
    throw new EndpointError(text, `${what} ${text}: file descriptor ${fd} is not open in this process (${errorCode(e)}); it must be inherited open`);
  }
  if (st.isFIFO()) return { type: 'pipe' };
  if (st.isFile()) return { type: 'file' };
  if (st.isSocket()) {
    const info = socketInfo(fd);
    if (info.type !== SOCK_STREAM) throw new EndpointError(text, `${what} ${text}: the socket is not a stream (SOCK_STREAM) socket`);
    return { type: 'socket', listening: info.listening };
  }
  // An fd nobody passed may still be open: Node's own (epoll, eventfd) are of none of the kinds above.
  const kind = st.isCharacterDevice() ? 'a character device' : st.isDirectory() ? 'a directory' : st.isBlockDevice() ? 'a block device' : 'not a pipe, file or socket (was it passed to migbridge?)';
  throw new EndpointError(text, `${what} ${text}: file descriptor ${fd} is ${kind}; a stream needs a socket, a pipe or a file`);
}

/** A connected stream socket wrapped from an inherited fd (Node owns and closes it from now on). */
function socketFromFd(fd: number, allowHalfOpen: boolean): net.Socket {
  return new net.Socket({ fd, allowHalfOpen, readable: true, writable: true });
}

export interface Listener {
  /** Where it listens, as bound: a tcp name becomes the address it resolved to, port 0 the chosen port. */
  readonly endpoint: Endpoint;
  /** Every accepted connection (an inherited connected socket: that one, once). */
  onConnection(cb: (socket: net.Socket) => void): void;
  /** Stops listening; a unix socket file is removed. */
  close(): Promise<void>;
}

export interface ListenOptions {
  /** Names the option in errors (e.g. "--listen"). */
  what: string;
  /** Mode of a unix socket file (default 0600). */
  mode?: number;
  allowHalfOpen?: boolean;
  /** Accepted sockets stay paused until the caller resumes them. */
  pauseOnConnect?: boolean;
}

function serverListener(server: net.Server, endpoint: Endpoint, onClose: () => Promise<void>): Listener {
  let closed = false;
  return {
    endpoint,
    onConnection: (cb) => { server.on('connection', cb); },
    close: async () => {
      if (closed) return;
      closed = true;
      server.close();
      await onClose();
    },
  };
}

function bound(server: net.Server, listen: (done: () => void) => void, text: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (e: NodeJS.ErrnoException): void => {
      const code = e.code ?? 'EIO';
      const errno = errnoNumber(code);
      reject(new EndpointSetupError(code, `cannot listen on ${text}: ${e.message}`, { cause: e, ...(errno !== undefined ? { errno } : {}) }));
    };
    server.once('error', onError);
    listen(() => {
      server.off('error', onError);
      resolve();
    });
  });
}

/** The address a tcp host stands for: a literal as is, a name resolved (getaddrinfo), its first answer. */
async function resolveHost(ep: Endpoint & { kind: 'tcp' }): Promise<{ address: string; family: 4 | 6 }> {
  if (net.isIP(ep.host)) return { address: ep.host, family: net.isIPv6(ep.host) ? 6 : 4 };
  try {
    const [first] = await lookup(ep.host, { all: true, order: 'verbatim' });
    if (first) return { address: first.address, family: first.family === 6 ? 6 : 4 };
  } catch (e) {
    throw new EndpointSetupError(errorCode(e), `cannot resolve the host of ${formatEndpoint(ep)}: ${(e as Error).message}`, { cause: e });
  }
  throw new EndpointSetupError('ENOTFOUND', `cannot resolve the host of ${formatEndpoint(ep)}: no address`);
}

/**
 * The fd under a connected net.Socket, for reading or writing it through the io engine
 * (libuv then keeps the handle only to close it); undefined should a handle not expose it.
 * The fd is non-blocking (libuv's), which the engine handles by polling on EAGAIN.
 */
export function socketFd(socket: net.Socket): number | undefined {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : undefined;
}

/** Listens on `ep` and resolves once connections can arrive. */
export async function listenEndpoint(ep: Endpoint, opts: ListenOptions): Promise<Listener> {
  const text = formatEndpoint(ep);
  const server = net.createServer({ allowHalfOpen: opts.allowHalfOpen ?? false, pauseOnConnect: opts.pauseOnConnect ?? false });
  switch (ep.kind) {
    case 'unix':
      await listenUnix(server, ep.path, opts.mode ?? SOCKET_MODE);
      return serverListener(server, ep, () => rm(ep.path, { force: true }));
    case 'tcp': {
      const { address, family } = await resolveHost(ep);
      await bound(server, (done) => server.listen({ host: address, port: ep.port, ipv6Only: family === 6 }, done), text);
      const at = server.address() as net.AddressInfo;
      return serverListener(server, { kind: 'tcp', host: at.address, port: at.port }, async () => undefined);
    }
    case 'fd': {
      const fd = inspectFd(ep.fd, opts.what);
      if (fd.type !== 'socket') throw new EndpointError(text, `${opts.what} ${text}: a ${fd.type} cannot take connections; give a socket (listening, or one connection)`);
      if (fd.listening) {
        await bound(server, (done) => server.listen({ fd: ep.fd }, done), text);
        return serverListener(server, ep, async () => undefined);
      }
      // A connected socket handed in: it is the one connection.
      return oneConnection(ep, socketFromFd(ep.fd, opts.allowHalfOpen ?? false), opts.pauseOnConnect ?? false);
    }
  }
}

function oneConnection(endpoint: Endpoint, socket: net.Socket, paused: boolean): Listener {
  if (paused) socket.pause();
  let handed = false;
  return {
    endpoint,
    onConnection: (cb) => {
      if (handed) return;
      handed = true;
      queueMicrotask(() => cb(socket));
    },
    close: async () => undefined,
  };
}

export interface ConnectOptions {
  /** Names the option in errors (e.g. "--to"). */
  what: string;
  /** How long to retry while the peer is not listening yet, in ms (0: one try). */
  waitMs: number;
  /** Keep our side writable after the peer ends its side (the proxy forwards half-closes). */
  allowHalfOpen?: boolean;
  /** TCP_NODELAY (QEMU sets it on multifd channels only: see the top of this file). */
  noDelay?: boolean;
}

/** Throws the EndpointError connecting would: an fd:N must be a connected stream socket (checked before waiting for anyone). */
export function checkConnectable(ep: Endpoint, what: string): void {
  if (ep.kind !== 'fd') return;
  const fd = inspectFd(ep.fd, what);
  if (fd.type !== 'socket' || fd.listening) {
    const text = formatEndpoint(ep);
    throw new EndpointError(text, `${what} ${text}: ${fd.type === 'socket' ? 'a listening socket' : `a ${fd.type}`} is not a connection; give a connected socket`);
  }
}

/** Connects to `ep` (a connected socket handed in as fd:N is used as is). */
export async function connectEndpoint(ep: Endpoint, opts: ConnectOptions): Promise<net.Socket> {
  const allowHalfOpen = opts.allowHalfOpen ?? false;
  switch (ep.kind) {
    case 'unix':
      return connectWhenListening({ path: unixSocketPath(ep.path), allowHalfOpen }, opts.waitMs);
    case 'tcp': {
      const s = await connectWhenListening({ host: ep.host, port: ep.port, allowHalfOpen }, opts.waitMs);
      s.setNoDelay(opts.noDelay ?? false);
      return s;
    }
    case 'fd': {
      checkConnectable(ep, opts.what);
      const s = socketFromFd(ep.fd, allowHalfOpen);
      if (opts.noDelay) s.setNoDelay(true);
      return s;
    }
  }
}
