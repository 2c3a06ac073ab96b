// Where a stream to restore comes from: a file (its vmdesc is read from the tail first),
// an fd handed in, or an endpoint migbridge listens on (like QEMU's -incoming): unix:,
// tcp:, or fd:N (a listening socket to accept on, or a connected socket or pipe read as is).
import * as fs from 'node:fs';
import type * as net from 'node:net';
import { DEFAULT_TARGET_PAGE_SIZE, type StreamEvent, probeStreamFile, readStream, readStreamFile } from '../qemu/index.js';
import { indexMultifdChannels } from '../qemu/multifd-index.js';
import { withMultifdDeviceState } from '../qemu/reframe-multifd.js';
import { type Endpoint, formatEndpoint, inspectFd, listenEndpoint } from '../util/endpoint.js';
import { CancelledError, abortReason, whenCancelled } from './cancel.js';

/** A file may come with the captures of its multifd channels (a proxy tee's FILE.multifd-N). */
export type SourceTarget = { file: string; multifd?: readonly string[] } | { fd: number } | { endpoint: Endpoint };

function readFd(fd: number): AsyncIterable<StreamEvent> {
  inspectFd(fd, '--from');
  return readStream(fs.createReadStream('', { fd, highWaterMark: 1 << 20, autoClose: false }));
}

/** `onListening` hears where an endpoint source listens, as bound, before any connection is awaited. */
export async function openEvents(source: SourceTarget, signal?: AbortSignal, onListening?: (endpoint: string) => void): Promise<AsyncIterable<StreamEvent>> {
  if ('file' in source) {
    if (!source.multifd?.length) return readStreamFile(source.file);
    // Device state that went over multifd channels is put back into the VFIO END sections.
    const { vmdesc } = await probeStreamFile(source.file);
    const index = await indexMultifdChannels(source.multifd, vmdesc?.page_size ?? DEFAULT_TARGET_PAGE_SIZE);
    // The decode reuses the vmdesc just read instead of reading the file's tail again.
    return withMultifdDeviceState(readStreamFile(source.file, vmdesc ? { vmdesc } : {}), index);
  }
  if ('fd' in source) return readFd(source.fd);
  const ep = source.endpoint;
  if (ep.kind === 'fd' && inspectFd(ep.fd, '--from').type !== 'socket') return readFd(ep.fd);
  const listener = await listenEndpoint(ep, { what: '--from' });
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
  // A cancel later ends the connection, so a read waiting on a sender that stopped returns.
  whenCancelled(signal, () => socket.destroy());
  return readStream(socket);
}
