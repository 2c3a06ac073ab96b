// Where a stream to restore comes from: a file (its vmdesc is read from the tail first),
// an fd handed in, or an endpoint migbridge listens on (like QEMU's -incoming): unix:,
// tcp:, or fd:N (a listening socket to accept on, or a connected socket or pipe read as is).
// Every one is read through the io engine into its buffer pool (ring-source.ts).
import type * as net from 'node:net';
import { DEFAULT_TARGET_PAGE_SIZE, type StreamEvent, probeStreamFile, readStream, readStreamFile } from '../qemu/index.js';
import { indexMultifdChannels } from '../qemu/multifd-index.js';
import { withMultifdDeviceState } from '../qemu/reframe-multifd.js';
import { type Endpoint, formatEndpoint, inspectFd, listenEndpoint, socketFd } from '../util/endpoint.js';
import { defaultEngine, type IoEngine } from '../native/index.js';
import { CancelledError, abortReason, whenCancelled } from './cancel.js';
import { RingByteSource } from './ring-source.js';

/** A file may come with the captures of its multifd channels (a proxy tee's FILE.multifd-N). */
export type SourceTarget = { file: string; multifd?: readonly string[] } | { fd: number } | { endpoint: Endpoint };

/**
 * The stream's events. A file's or an fd's bytes are read through the io engine into the
 * registered buffer pool (see ring-source.ts): a restore writes the payloads from those
 * buffers. `onListening` hears where an endpoint source listens, as bound, before any
 * connection is awaited.
 */
export async function openEvents(source: SourceTarget, signal?: AbortSignal, onListening?: (endpoint: string) => void, io: IoEngine = defaultEngine()): Promise<AsyncIterable<StreamEvent>> {
  const openBytes = (path: string, chunkSize: number) => RingByteSource.openFile(io, path, chunkSize);
  const readFd = (fd: number): AsyncIterable<StreamEvent> => {
    const bytes = new RingByteSource(io, fd);
    // A cancel interrupts a read waiting on a sender that stopped.
    whenCancelled(signal, () => bytes.destroy());
    return readStream(bytes);
  };
  if ('file' in source) {
    if (!source.multifd?.length) return readStreamFile(source.file, { openBytes });
    // Device state that went over multifd channels is put back into the VFIO END sections.
    const { vmdesc } = await probeStreamFile(source.file);
    const index = await indexMultifdChannels(source.multifd, vmdesc?.page_size ?? DEFAULT_TARGET_PAGE_SIZE);
    // The decode reuses the vmdesc just read instead of reading the file's tail again.
    return withMultifdDeviceState(readStreamFile(source.file, { openBytes, ...(vmdesc ? { vmdesc } : {}) }), index);
  }
  if ('fd' in source) {
    inspectFd(source.fd, '--from');
    return readFd(source.fd);
  }
  const ep = source.endpoint;
  if (ep.kind === 'fd') {
    // A pipe, a file or a connected socket handed in is the stream itself: read through the
    // ring as is. (Wrapped in a net.Socket, libuv would start reading it at once and the
    // ring would miss what libuv took.) Only a listening socket waits for a connection.
    const fd = inspectFd(ep.fd, '--from');
    if (fd.type !== 'socket' || !fd.listening) return readFd(ep.fd);
  }
  // Accepted sockets stay paused: libuv reads nothing, the ring reads the fd.
  const listener = await listenEndpoint(ep, { what: '--from', pauseOnConnect: true });
  onListening?.(formatEndpoint(listener.endpoint));
  // A cancel while nobody connected yet (also one that came while the socket was being
  // set up): stop listening (a unix socket file is removed).
  let unlisten: () => void = () => undefined;
  let socket: net.Socket;
  try {
    socket = await new Promise<net.Socket>((resolve, reject) => {
      listener.onConnection(resolve);
      unlisten = whenCancelled(signal, () => reject(new CancelledError(abortReason(signal!), `waiting for a connection on ${formatEndpoint(listener.endpoint)}`)));
    });
  } finally {
    unlisten();
    await listener.close();
  }
  const fd = socketFd(socket);
  if (fd === undefined) {
    // A handle without an fd (not seen on Linux): libuv reads it.
    whenCancelled(signal, () => socket.destroy());
    socket.resume();
    return readStream(socket);
  }
  // The connection is read through the ring into the pool like a file. The socket is
  // destroyed (its fd closed) only once no ring read of it is pending; a cancel cancels the
  // read waiting on a sender that stopped.
  const bytes = new RingByteSource(io, fd, { onClosed: () => socket.destroy() });
  whenCancelled(signal, () => bytes.destroy());
  return readStream(bytes);
}
