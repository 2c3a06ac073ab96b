// Restore reads its stream through the io engine into the registered pool and writes the
// payloads to the data_fds from those same buffers: with a pool far smaller than the
// stream, every buffer is recycled many times while writes of slices of it are still in
// flight. A buffer that went back to the pool too early would be overwritten by the next
// read before its write, and the destination's digest check would fail. After the restore
// every pool buffer is free again (no reference leaked). A file, an fd and a connection
// accepted on an endpoint all take this road.
import test from 'ava';
import { closeSync, createReadStream, mkdtempSync, openSync, rmSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { restore } from '../../src/engine/restore.js';
import { save } from '../../src/engine/save.js';
import { openSink } from '../../src/engine/sink.js';
import { openEvents, type SourceTarget } from '../../src/engine/source.js';
import { IoEngine, type IoBackendKind } from '../../src/native/index.js';
import { createSimDevice, type SimDevice } from '../../src/vfio/sim/index.js';

const work = mkdtempSync(path.join(tmpdir(), 'migbridge-ring-restore-'));
test.after.always(() => rmSync(work, { recursive: true, force: true }));

const sims = (n: number, base: number): SimDevice[] => Array.from({ length: n }, (_, i) => createSimDevice(`sim:seed=${base + i},size=3MiB`));

let saved: Promise<{ file: string; digests: bigint[]; bytes: number }> | undefined;
function savedStream(): Promise<{ file: string; digests: bigint[]; bytes: number }> {
  saved ??= (async () => {
    const file = path.join(work, 'three.mig');
    const src = sims(3, 1);
    try {
      const r = await save({ devices: src, sink: await openSink({ file }) });
      return { file, digests: src.map((d) => d.stateDigest()), bytes: r.totalBytes };
    } finally {
      await Promise.all(src.map((d) => d.close()));
    }
  })();
  return saved;
}

for (const force of ['io_uring', 'threadpool'] as IoBackendKind[]) {
  for (const how of ['file', 'fd', 'socket'] as const) {
    test(`[${force}] restore from a ${how} through a 4 x 64 KiB pool: every device verified, every pool buffer free after`, async (t) => {
      const { file, digests, bytes } = await savedStream();
      const io = IoEngine.open({ force, bufferCount: 4, bufferSize: 64 << 10 });
      const dst = sims(3, 5000);
      const fd = how === 'fd' ? openSync(file, 'r') : -1;
      try {
        const sock = path.join(work, `in-${force}.sock`);
        const source: SourceTarget = how === 'file' ? { file } : how === 'fd' ? { fd } : { endpoint: { kind: 'unix', path: sock } };
        // The socket case: a sender connects once the restore listens and writes the file.
        let sendTo: () => void = () => undefined;
        const sent = new Promise<void>((resolve, reject) => {
          sendTo = () => createReadStream(file).pipe(net.connect(sock)).on('close', resolve).on('error', reject);
        });
        const events = await openEvents(source, undefined, () => sendTo(), io);
        const report = await restore({ events, devices: dst, io, maxInFlight: 1 << 20 });
        if (how === 'socket') await sent;
        t.true(report.ok);
        t.is(report.totalBytes, bytes, 'every byte saved was written to the destinations');
        dst.forEach((d, i) => {
          t.true(d.resumeResult?.verified, `${d.id} verified the digest on leaving RESUMING`);
          t.is(d.stateDigest(), digests[i], `${d.id} holds source ${i}'s state`);
        });
        t.is(io.freeBufferCount(), 4, 'every pool buffer is back in the pool');
        // Reads of at most 64 KiB and the writes of their slices both complete on the engine
        // (a connection read by libuv would leave only the writes there).
        t.true(io.stats().completions >= 2 * Math.floor(bytes / (64 << 10)), `the stream was read through the engine in pool-sized pieces (${io.stats().completions} completions)`);
      } finally {
        if (fd >= 0) closeSync(fd);
        await Promise.all(dst.map((d) => d.close()));
        await io.shutdown();
      }
    });
  }
}
