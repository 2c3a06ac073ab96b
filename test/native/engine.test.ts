// IoEngine behaviour on real fds (pipes, socketpairs, tmpfs files, /proc),
// run once per backend: io_uring and the forced worker-pool fallback must
// pass the same rules.
import test, { type ExecutionContext } from 'ava';
import { mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync, closeSync as fsClose } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { SysError, MigbridgeError } from '../../src/errors.js';
import {
  IoEngine,
  POLLIN,
  POLLOUT,
  closeSync,
  pipe,
  setNonBlocking,
  socketpair,
  type IoBackendKind,
  type PooledBuffer,
} from '../../src/native/index.js';
import { firstMismatch, fillPattern } from './pattern.js';

const FIONREAD = 0x541b;
const VFIO_DEVICE_FEATURE = 0x3b75; // pipes do not implement it: ENOTTY
const backends: IoBackendKind[] = ['io_uring', 'threadpool'];

interface WorkerReport {
  counts: number[];
  mismatch: (number | null)[];
}

function runWorker(mode: 'write' | 'read', streams: { fd: number; stream: number; size: number }[]): Promise<WorkerReport> {
  return new Promise((resolve, reject) => {
    const w = new Worker(new URL('./stream-worker.js', import.meta.url), { workerData: { mode, streams, closeWhenDone: true } });
    w.once('message', resolve);
    w.once('error', reject);
  });
}

/** Reads fd to EOF through the engine, checking every byte against the stream's pattern. */
async function drain(engine: IoEngine, fd: number, stream: number): Promise<{ count: number; mismatch: number | null; reads: number }> {
  let count = 0;
  let reads = 0;
  let mismatch: number | null = null;
  for (;;) {
    const b = await engine.read(fd);
    reads++;
    try {
      if (b.data.length === 0) return { count, mismatch, reads };
      const bad = firstMismatch(b.data, stream, count);
      if (bad >= 0 && mismatch === null) mismatch = count + bad;
      count += b.data.length;
    } finally {
      b.release();
    }
  }
}

async function withEngine(t: ExecutionContext, io: IoBackendKind, fn: (e: IoEngine) => Promise<void>, opts = {}): Promise<void> {
  const e = IoEngine.open({ force: io, ...opts });
  t.is(e.info().io, io);
  try {
    await fn(e);
  } finally {
    await e.shutdown();
  }
}

async function rejectsSys(t: ExecutionContext, p: Promise<unknown>, code: string): Promise<SysError> {
  const e = await t.throwsAsync(p, { instanceOf: SysError });
  t.is(e!.code, code);
  return e as SysError;
}

for (const io of backends) {
  for (const kind of ['pipe', 'socketpair'] as const) {
    test(`[${io}] 64 ${kind}s read at once: every byte arrives in order, counts exact`, async (t) => {
      await withEngine(t, io, async (e) => {
        const pairs = Array.from({ length: 64 }, () => (kind === 'pipe' ? pipe() : socketpair()));
        const sizes = pairs.map((_, i) => 150_000 + i * 7919);
        // four writer threads, 16 fds each, blocking writes in chunks of 1..70000 bytes
        const writers = [0, 1, 2, 3].map((w) =>
          runWorker(
            'write',
            pairs.slice(w * 16, w * 16 + 16).map(([, wfd], j) => ({ fd: wfd, stream: w * 16 + j, size: sizes[w * 16 + j]! })),
          ),
        );
        const results = await Promise.all(pairs.map(([rfd], i) => drain(e, rfd, i)));
        const reports = await Promise.all(writers);
        t.deepEqual(reports.flatMap((r) => r.counts), sizes);
        t.deepEqual(results.map((r) => r.count), sizes);
        t.deepEqual(results.map((r) => r.mismatch), sizes.map(() => null));
        t.true(results.some((r) => r.reads > 2), 'reads are short and repeated, not one per stream');
        for (const [rfd] of pairs) closeSync(rfd);
        t.is(e.inFlightBytes(), 0);
      });
    });
  }

  test(`[${io}] mixed: 32 streams written and 32 read through the engine at once`, async (t) => {
    await withEngine(t, io, async (e) => {
      const outs = Array.from({ length: 32 }, () => pipe());
      const ins = Array.from({ length: 32 }, () => socketpair());
      const size = (i: number): number => 100_000 + i * 12_345;
      const reader = runWorker('read', outs.map(([rfd], i) => ({ fd: rfd, stream: 100 + i, size: size(i) })));
      const writer = runWorker('write', ins.map(([, wfd], i) => ({ fd: wfd, stream: 200 + i, size: size(i) })));
      const writes = outs.map(async ([, wfd], i) => {
        // pieces of odd sizes, half through write and half through writev
        let pos = 0;
        while (pos < size(i)) {
          const n = Math.min(size(i) - pos, 33_333 + i);
          const chunk = Buffer.alloc(n);
          fillPattern(chunk, 100 + i, pos);
          const done = i % 2 ? await e.write(wfd, chunk) : await e.writev(wfd, [chunk.subarray(0, 100), chunk.subarray(100)]);
          t.is(done, n);
          pos += n;
        }
        await e.close(wfd);
      });
      const reads = ins.map(([rfd], i) => drain(e, rfd, 200 + i));
      await Promise.all(writes);
      const readResults = await Promise.all(reads);
      const rep = await reader;
      await writer;
      t.deepEqual(rep.counts, outs.map((_, i) => size(i)));
      t.deepEqual(rep.mismatch, outs.map(() => null));
      t.deepEqual(readResults.map((r) => [r.count, r.mismatch]), ins.map((_, i) => [size(i), null]));
      for (const [rfd, wfd] of ins) {
        closeSync(rfd);
        void wfd; // closed by the writer thread
      }
    });
  });

  test(`[${io}] a read returns what is there (short read), length caps it, EOF is a 0-length read`, async (t) => {
    await withEngine(t, io, async (e) => {
      const [r, w] = pipe();
      writeSync(w, Buffer.from('0123456789'));
      const a = await e.read(r);
      t.is(a.data.toString(), '0123456789');
      a.release();
      writeSync(w, Buffer.alloc(100, 1));
      const b = await e.read(r, { length: 30 });
      t.is(b.data.length, 30);
      b.release();
      closeSync(w);
      const c = await e.read(r);
      t.is(c.data.length, 70);
      c.release();
      const eof = await e.read(r);
      t.is(eof.data.length, 0);
      eof.release();
      closeSync(r);
    });
  });

  test(`[${io}] a blocked read completes when a writer shows up later`, async (t) => {
    await withEngine(t, io, async (e) => {
      const [r, w] = pipe();
      const p = e.read(r);
      setTimeout(() => writeSync(w, Buffer.from('late')), 30);
      const b = await p;
      t.is(b.data.toString(), 'late');
      b.release();
      closeSync(r);
      closeSync(w);
    });
  });

  test(`[${io}] EAGAIN on an O_NONBLOCK fd is waited out (poll, then retry)`, async (t) => {
    await withEngine(t, io, async (e) => {
      const [a, b] = socketpair();
      setNonBlocking(a, true);
      const buf = Buffer.alloc(16);
      const p = e.readInto(a, buf);
      setTimeout(() => writeSync(b, Buffer.from('ready')), 30);
      t.is(await p, 5);
      t.is(buf.subarray(0, 5).toString(), 'ready');
      // a write larger than the socket buffer on a non-blocking fd: EAGAIN, poll, rest resubmitted
      const big = Buffer.alloc(4 << 20);
      fillPattern(big, 9, 0);
      const wp = e.write(a, big);
      let got = 0;
      let bad = -1;
      while (got < big.length) {
        const c = await e.read(b);
        if (bad < 0 && firstMismatch(c.data, 9, got) >= 0) bad = got;
        got += c.data.length;
        c.release();
      }
      t.is(await wp, big.length);
      t.is(got, big.length);
      t.is(bad, -1);
      closeSync(a);
      closeSync(b);
    });
  });

  test(`[${io}] reads and writes at an offset (pread/pwrite) on a tmpfs file; readv fills several buffers`, async (t) => {
    const dir = mkdtempSync(join(process.env.XDG_RUNTIME_DIR ?? tmpdir(), 'migbridge-io-'));
    try {
      const path = join(dir, 'f');
      writeFileSync(path, Buffer.alloc(64, 0x2e));
      const fd = openSync(path, 'r+');
      await withEngine(t, io, async (e) => {
        t.is(await e.write(fd, Buffer.from('HELLO'), { offset: 10 }), 5);
        t.is(await e.writev(fd, [Buffer.from('ab'), Buffer.from('cd')], { offset: 40 }), 4);
        const b = await e.read(fd, { offset: 8, length: 9 });
        t.is(b.data.toString(), '..HELLO..');
        b.release();
        const x = Buffer.alloc(3);
        const y = Buffer.alloc(3);
        t.is(await e.readv(fd, [x, y], { offset: 39 }), 6);
        t.is(x.toString() + y.toString(), '.abcd.');
        // stream position: reads without offset advance the file position
        const s1 = await e.read(fd, { length: 12 });
        const s2 = await e.read(fd, { length: 3 });
        t.is(s1.data.toString() + s2.data.toString(), '..........HELLO');
        s1.release();
        s2.release();
      });
      fsClose(fd);
      t.is(readFileSync(path).subarray(10, 15).toString(), 'HELLO');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test(`[${io}] EIO from the kernel is a typed SysError with errno, fd and op`, async (t) => {
    await withEngine(t, io, async (e) => {
      const fd = openSync('/proc/self/mem', 'r');
      // address 0 is never mapped: the kernel answers EIO
      const err = await rejectsSys(t, e.read(fd, { offset: 0, length: 16 }), 'EIO');
      t.is(err.errno, 5);
      t.is(err.fd, fd);
      t.is(err.op, 'read');
      fsClose(fd);
      t.is(e.inFlightBytes(), 0, 'the pool buffer came back after the error');
    });
  });

  test(`[${io}] EBADF: writing the read end of a pipe, reading a closed fd`, async (t) => {
    await withEngine(t, io, async (e) => {
      const [r, w] = pipe();
      const a = await rejectsSys(t, e.write(r, Buffer.from('x')), 'EBADF');
      t.is(a.op, 'write');
      t.is(a.fd, r);
      closeSync(r);
      closeSync(w);
      const b = await rejectsSys(t, e.read(r), 'EBADF');
      t.is(b.errno, 9);
      await rejectsSys(t, e.close(r), 'EBADF');
    });
  });

  test(`[${io}] cancel(fd) rejects every pending op on that fd with ECANCELED and only those`, async (t) => {
    await withEngine(t, io, async (e) => {
      const [r1, w1] = pipe();
      const [r2, w2] = pipe();
      const p1 = e.read(r1);
      const p2 = e.readInto(r1, Buffer.alloc(8));
      const other = e.read(r2);
      await new Promise((res) => setTimeout(res, 30));
      t.is(await e.cancel(r1), 2);
      await rejectsSys(t, p1, 'ECANCELED');
      await rejectsSys(t, p2, 'ECANCELED');
      writeSync(w2, Buffer.from('still here'));
      const o = await other;
      t.is(o.data.toString(), 'still here');
      o.release();
      t.is(await e.cancel(r1), 0, 'nothing left to cancel');
      // the fd stays usable after a cancel
      writeSync(w1, Buffer.from('after'));
      const again = await e.read(r1);
      t.is(again.data.toString(), 'after');
      again.release();
      for (const fd of [r1, w1, r2, w2]) closeSync(fd);
    });
  });

  test(`[${io}] timeouts: read and write reject ETIMEDOUT near the deadline, poll resolves 0`, async (t) => {
    await withEngine(t, io, async (e) => {
      const [r, w] = pipe();
      let t0 = performance.now();
      const err = await rejectsSys(t, e.read(r, { timeoutMs: 80 }), 'ETIMEDOUT');
      const took = performance.now() - t0;
      t.is(err.op, 'read');
      t.true(took >= 70 && took < 10_000, `read timed out after ${took} ms`);
      t0 = performance.now();
      t.is(await e.poll(r, POLLIN, { timeoutMs: 60 }), 0);
      t.true(performance.now() - t0 >= 50);
      // nobody reads: the pipe fills (64 KiB) and the rest of the write times out
      await rejectsSys(t, e.write(w, Buffer.alloc(1 << 20), { timeoutMs: 80 }), 'ETIMEDOUT');
      t.is(await e.poll(r, POLLIN), POLLIN);
      t.true((await e.poll(w, POLLOUT, { timeoutMs: 50 })) === 0, 'full pipe is not writable');
      // a fast op with a timeout completes normally
      const b = await e.read(r, { timeoutMs: 1000 });
      t.true(b.data.length > 0);
      b.release();
      closeSync(r);
      closeSync(w);
    });
  });

  test(`[${io}] ioctlBatch runs ioctls in parallel, each with its own result; ioctl throws typed`, async (t) => {
    await withEngine(t, io, async (e) => {
      const pipes = Array.from({ length: 16 }, () => pipe());
      pipes.forEach(([, w], i) => writeSync(w, Buffer.alloc(i * 100 + 1)));
      const args = pipes.map(() => Buffer.alloc(4));
      const reqs = pipes.flatMap(([r], i) => [
        { fd: r, request: FIONREAD, arg: args[i]! },
        { fd: r, request: VFIO_DEVICE_FEATURE, arg: null },
      ]);
      const res = await e.ioctlBatch(reqs);
      t.deepEqual(
        res,
        reqs.map((_, k) => (k % 2 === 0 ? { ret: 0, errno: 0 } : { ret: -1, errno: 25 })),
      );
      t.deepEqual(args.map((a) => a.readInt32LE(0)), pipes.map((_, i) => i * 100 + 1));
      const err = await t.throwsAsync(e.ioctl(pipes[0]![0], VFIO_DEVICE_FEATURE, 0), { instanceOf: SysError });
      t.like(err, { code: 'ENOTTY', errno: 25, op: 'ioctl', fd: pipes[0]![0] });
      t.is(await e.ioctl(pipes[3]![0], FIONREAD, args[0]!), 0);
      t.is(args[0]!.readInt32LE(0), 301);
      for (const [r, w] of pipes) {
        closeSync(r);
        closeSync(w);
      }
    });
  });

  test(`[${io}] the fixed pool caps memory in flight: a read waits for a released buffer`, async (t) => {
    await withEngine(
      t,
      io,
      async (e) => {
        t.deepEqual([e.info().bufferCount, e.info().bufferSize], [2, 4096]);
        const [r, w] = pipe();
        writeSync(w, Buffer.alloc(3 * 4096, 5));
        const a = await e.read(r);
        const b = await e.read(r);
        t.is(e.inFlightBytes(), 2 * 4096);
        let third: PooledBuffer | undefined;
        const p = e.read(r).then((x) => (third = x));
        await new Promise((res) => setTimeout(res, 30));
        t.is(third, undefined, 'no third buffer while two are held');
        t.is(e.inFlightBytes(), 2 * 4096);
        a.release();
        a.release(); // a second release is harmless
        await p;
        t.is(third!.data.length, 4096);
        b.release();
        third!.release();
        t.is(e.inFlightBytes(), 0);
        closeSync(r);
        closeSync(w);
      },
      { bufferCount: 2, bufferSize: 4096 },
    );
  });

  test(`[${io}] shutdown rejects pending ops with ECANCELED and later calls with ESHUTDOWN`, async (t) => {
    const e = IoEngine.open({ force: io });
    const [r, w] = pipe();
    const p = e.read(r);
    const q = e.poll(w, POLLIN);
    await new Promise((res) => setTimeout(res, 20));
    await e.shutdown();
    await rejectsSys(t, p, 'ECANCELED');
    await rejectsSys(t, q, 'ECANCELED');
    await t.throwsAsync(e.read(r), { instanceOf: MigbridgeError, code: 'ESHUTDOWN' });
    await e.shutdown(); // idempotent
    closeSync(r);
    closeSync(w);
  });
}

test('bad arguments are typed errors, not native crashes', async (t) => {
  const e = IoEngine.open();
  t.throws(() => IoEngine.open({ bufferCount: 0 }), { instanceOf: MigbridgeError, code: 'EINVAL' });
  await t.throwsAsync(e.read(0, { length: 0 }), { code: 'EINVAL' });
  await t.throwsAsync(e.read(0, { length: (1 << 20) + 1 }), { code: 'EINVAL' });
  await t.throwsAsync(e.read(-1), { code: 'EBADF' });
  await t.throwsAsync(e.read(0, { offset: -5 }), { code: 'EINVAL' });
  await t.throwsAsync(e.read(0, { timeoutMs: 0 }), { code: 'EINVAL' });
  await e.shutdown();
});
