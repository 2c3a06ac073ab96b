// Worker thread for the engine tests: writes the pattern to, or reads and
// checks it from, a set of fds with plain blocking syscalls, round-robin in
// chunks of varying size, independently of the engine under test.
import { readSync, writeSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { closeSync } from '../../src/native/index.js';
import { fillPattern, firstMismatch } from './pattern.js';

interface Job {
  mode: 'write' | 'read';
  streams: { fd: number; stream: number; size: number }[];
  closeWhenDone: boolean;
}

const job = workerData as Job;
const pos = job.streams.map(() => 0);
const mismatch: (number | null)[] = job.streams.map(() => null);
const done = job.streams.map(() => false);
let seed = 12345;
const nextChunk = (): number => {
  seed = (seed * 1103515245 + 12345) & 0x7fffffff;
  return 1 + (seed % 70000);
};
const buf = Buffer.alloc(70000);

while (done.some((d) => !d)) {
  job.streams.forEach((s, i) => {
    if (done[i]) return;
    if (job.mode === 'write') {
      const n = Math.min(nextChunk(), s.size - pos[i]!);
      const chunk = buf.subarray(0, n);
      fillPattern(chunk, s.stream, pos[i]!);
      let off = 0;
      while (off < n) off += writeSync(s.fd, chunk, off, n - off);
      pos[i]! += n;
      if (pos[i] === s.size) {
        done[i] = true;
        if (job.closeWhenDone) closeSync(s.fd);
      }
    } else {
      const n = readSync(s.fd, buf, 0, nextChunk(), null);
      if (n === 0) {
        done[i] = true;
        if (job.closeWhenDone) closeSync(s.fd);
        return;
      }
      const bad = firstMismatch(buf.subarray(0, n), s.stream, pos[i]!);
      if (bad >= 0 && mismatch[i] === null) mismatch[i] = pos[i]! + bad;
      pos[i]! += n;
    }
  });
}
parentPort!.postMessage({ counts: pos, mismatch });
