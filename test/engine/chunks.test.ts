// ChunkReader: reads a data_fd into the engine's registered pool within a quota (the one
// bound on save's read-ahead memory) and up to a byte limit (a precopy round), on both
// io backends. Pipes carry a known pattern so order and content are checked byte by byte.
import test from 'ava';
import { writeSync } from 'node:fs';
import { ChunkReader } from '../../src/engine/chunks.js';
import { IoEngine, closeSync, pipe, setPipeSize, type IoBackendKind } from '../../src/native/index.js';
import { fillPattern, firstMismatch } from '../native/pattern.js';

const BUF = 64 << 10;
const backends: IoBackendKind[] = ['io_uring', 'threadpool'];

/** A pipe already holding `size` pattern bytes (its write end closed when `close`). */
function filledPipe(size: number, close: boolean): { rfd: number; wfd: number } {
  const [rfd, wfd] = pipe();
  setPipeSize(wfd, 1 << 20);
  const data = Buffer.alloc(size);
  fillPattern(data, 7, 0);
  writeSync(wfd, data);
  if (close) closeSync(wfd);
  return { rfd, wfd };
}

async function drain(reader: ChunkReader): Promise<Buffer> {
  const parts: Buffer[] = [];
  for (let c = await reader.next(); c; c = await reader.next()) {
    parts.push(Buffer.from(c.data));
    c.release();
  }
  return Buffer.concat(parts);
}

for (const force of backends) {
  test(`${force}: a reader holds at most its quota of pool buffers, then reads on as chunks are released`, async (t) => {
    const io = IoEngine.open({ force, bufferCount: 8, bufferSize: BUF });
    const { rfd } = filledPipe(10 * BUF, true);
    try {
      const reader = new ChunkReader(io, rfd, { chunkSize: BUF, quota: 2, timeoutMs: 10_000, onError: (e) => e as Error });
      reader.start();
      // ready() resolves at once while a chunk is buffered: yield to the event loop between checks.
      while (reader.score() < 2 * BUF) await new Promise<void>((r) => setImmediate(r));
      // Two chunks filled and no third read started: the pool holds exactly the quota.
      t.is(io.inFlightBytes(), 2 * BUF);
      const all = await drain(reader);
      t.is(all.length, 10 * BUF);
      t.is(firstMismatch(all, 7, 0), -1);
      t.is(reader.bytesRead, 10 * BUF);
      t.is(io.inFlightBytes(), 0);
    } finally {
      closeSync(rfd);
      await io.shutdown();
    }
  });

  test(`${force}: a reader stops at its byte limit (a precopy round) and leaves the rest in the fd`, async (t) => {
    const io = IoEngine.open({ force, bufferCount: 8, bufferSize: BUF });
    const { rfd, wfd } = filledPipe(3 * BUF, false);
    try {
      const reader = new ChunkReader(io, rfd, { chunkSize: BUF, quota: 4, limit: BUF + 100, timeoutMs: 10_000, onError: (e) => e as Error });
      reader.start();
      const got = await drain(reader);
      t.is(got.length, BUF + 100);
      t.is(firstMismatch(got, 7, 0), -1);
      t.true(reader.finished());
      // The next reader goes on where the limit stopped (no byte read and dropped).
      closeSync(wfd);
      const rest = new ChunkReader(io, rfd, { chunkSize: BUF, quota: 4, timeoutMs: 10_000, onError: (e) => e as Error });
      rest.start();
      const tail = await drain(rest);
      t.is(tail.length, 2 * BUF - 100);
      t.is(firstMismatch(Buffer.concat([got, tail]), 7, 0), -1);
    } finally {
      closeSync(rfd);
      await io.shutdown();
    }
  });
}
