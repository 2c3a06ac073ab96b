// Worker thread for bench/uring.ts: writes `bytes` into one pipe in 1 MiB
// blocking writes, then closes it (the reader sees EOF).
import { writeSync } from 'node:fs';
import { workerData, parentPort } from 'node:worker_threads';
import { closeSync } from '../src/native/index.js';

const { fd, bytes, start } = workerData as { fd: number; bytes: number; start: Int32Array };
const chunk = Buffer.alloc(1 << 20, 0x5a);
// Ready only once this module graph is loaded: loading may need libuv's
// threadpool, which the fs.read baseline fills with blocking pipe reads.
parentPort!.postMessage('ready');
Atomics.wait(start, 0, 0); // all writers start together with the reader
let left = bytes;
while (left > 0) {
  const n = writeSync(fd, chunk, 0, Math.min(left, chunk.length));
  left -= n;
}
closeSync(fd);
parentPort!.postMessage('done');
