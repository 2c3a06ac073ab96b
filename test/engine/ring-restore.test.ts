// Restore reads its stream through the io engine into the registered pool and writes the
// payloads to the data_fds from those same buffers: with a pool far smaller than the
// stream, every buffer is recycled many times while writes of slices of it are still in
// flight. A buffer that went back to the pool too early would be overwritten by the next
// read before its write, and the destination's digest check would fail. After the restore
// every pool buffer is free again (no reference leaked).
import test from 'ava';
import { closeSync, mkdtempSync, openSync, rmSync } from 'node:fs';
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
  for (const how of ['file', 'fd'] as const) {
    test(`[${force}] restore from a ${how} through a 4 x 64 KiB pool: every device verified, every pool buffer free after`, async (t) => {
      const { file, digests, bytes } = await savedStream();
      const io = IoEngine.open({ force, bufferCount: 4, bufferSize: 64 << 10 });
      const dst = sims(3, 5000);
      const fd = how === 'fd' ? openSync(file, 'r') : -1;
      try {
        const source: SourceTarget = how === 'file' ? { file } : { fd };
        const report = await restore({ events: await openEvents(source, undefined, undefined, io), devices: dst, io, maxInFlight: 1 << 20 });
        t.true(report.ok);
        t.is(report.totalBytes, bytes, 'every byte saved was written to the destinations');
        dst.forEach((d, i) => {
          t.true(d.resumeResult?.verified, `${d.id} verified the digest on leaving RESUMING`);
          t.is(d.stateDigest(), digests[i], `${d.id} holds source ${i}'s state`);
        });
        t.is(io.freeBufferCount(), 4, 'every pool buffer is back in the pool');
        t.true(io.stats().completions > 9 * 16, 'the stream was read through the engine in pool-sized pieces');
      } finally {
        if (fd >= 0) closeSync(fd);
        await Promise.all(dst.map((d) => d.close()));
        await io.shutdown();
      }
    });
  }
}
