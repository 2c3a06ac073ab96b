// Save through a small buffer pool: the pool is the one bound on save's data memory, so
// more devices than pool buffers (QEMU framing and interleaved, precopy included) must
// still complete (no device waiting for a buffer held by one that is not being written)
// and restore verified.
import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { restore } from '../../src/engine/restore.js';
import { save } from '../../src/engine/save.js';
import { openSink } from '../../src/engine/sink.js';
import { IoEngine } from '../../src/native/index.js';
import { readStreamFile } from '../../src/qemu/index.js';
import { createSimDevice } from '../../src/vfio/sim/index.js';

const work = mkdtempSync(path.join(tmpdir(), 'migbridge-pool-'));
test.after.always(() => rmSync(work, { recursive: true, force: true }));

for (const interleave of [false, true]) {
  test(`${interleave ? 'interleaved' : 'QEMU'} framing: 6 devices with precopy through a 4-buffer pool complete and restore verified`, async (t) => {
    const bufferSize = 64 << 10;
    const io = IoEngine.open({ bufferCount: 4, bufferSize });
    const spec = 'size=1MiB,precopy=256KiB';
    const src = Array.from({ length: 6 }, (_, i) => createSimDevice(`sim:seed=${40 + i},${spec}`));
    const dst = Array.from({ length: 6 }, (_, i) => createSimDevice(`sim:seed=${90 + i},${spec}`));
    const file = path.join(work, `pool-${interleave}.mig`);
    try {
      const saved = await save({ devices: src, sink: await openSink({ file }), io, interleave, precopy: true });
      t.true(saved.devices.every((d) => d.precopyBytes > 0));
      const restored = await restore({ events: readStreamFile(file), devices: dst });
      t.true(restored.ok);
      for (let i = 0; i < 6; i++) t.is(dst[i]!.stateDigest(), src[i]!.stateDigest());
    } finally {
      await Promise.all([...src, ...dst].map((d) => d.close()));
      await io.shutdown();
    }
  });
}
