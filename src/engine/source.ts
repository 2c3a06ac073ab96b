// Where a stream to restore comes from: a file (its vmdesc is read from the tail first),
// an fd handed in, or a unix socket migbridge listens on (like QEMU's -incoming unix:).
import * as fs from 'node:fs';
import * as net from 'node:net';
import { type StreamEvent, readStream, readStreamFile } from '../qemu/index.js';

export type SourceTarget = { file: string } | { fd: number } | { unix: string };

export async function openEvents(source: SourceTarget): Promise<AsyncIterable<StreamEvent>> {
  if ('file' in source) return readStreamFile(source.file);
  if ('fd' in source) return readStream(fs.createReadStream('', { fd: source.fd, highWaterMark: 1 << 20, autoClose: false }));
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(source.unix, resolve);
  });
  const socket = await new Promise<net.Socket>((resolve) => server.once('connection', resolve));
  server.close();
  fs.rmSync(source.unix, { force: true });
  return readStream(socket);
}
