// Save's progress counts each device twice: bytes read off its data_fd and bytes written to
// the stream. With QEMU framing a device's data can be read long before its END section is
// written, and a bar counting only written bytes looked hung (0 B) meanwhile.
import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import type { WriteStream } from 'node:tty';
import { Progress } from '../../src/cli/progress.js';
import { save } from '../../src/engine/save.js';
import { openSink } from '../../src/engine/sink.js';
import { createSimDevice } from '../../src/vfio/sim/index.js';

const work = mkdtempSync(path.join(tmpdir(), 'migbridge-progress-'));
test.after.always(() => rmSync(work, { recursive: true, force: true }));

/** A terminal stand-in: Progress draws only on a TTY; what it drew is kept. */
function fakeTty(): { out: WriteStream; drawn: string[] } {
  const drawn: string[] = [];
  const out = { isTTY: true, write: (s: string) => drawn.push(s) } as unknown as WriteStream;
  return { out, drawn };
}

test('save progress: every device shows bytes read from its data_fd and bytes written to the stream', async (t) => {
  const devices = [1, 2, 3].map((i) => createSimDevice(`sim:id=p${i},seed=${i},size=3MiB`));
  const { out, drawn } = fakeTty();
  const progress = new Progress(out, 'save');
  try {
    const report = await save({ devices, sink: await openSink({ file: path.join(work, 's.mig') }), progress });
    progress.stop();
    const last = drawn.at(-1)!;
    for (const d of report.devices) {
      const line = last.split('\n').find((l) => l.includes(` ${d.id} `))!;
      t.truthy(line, `a line for ${d.id}: ${last}`);
      // Both figures, and both complete at the end: 3 MiB read and 3 MiB written.
      t.regex(line, /read +3\.0 MiB written +3\.0 MiB/, line);
    }
  } finally {
    progress.stop();
    await Promise.all(devices.map((d) => d.close()));
  }
});
