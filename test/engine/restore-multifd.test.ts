// restore from a multifd capture: a device's stop-copy data and config went over multifd
// channels (QEMU 10's multifd device-state transfer), the main stream holds only dummy VFIO
// END/FULL markers. HAND-BUILT capture (§9.6 framing) around the state a simulated device
// really produced (saved by the engine); the kernel lane does it with real QEMU and mtty.
import test from 'ava';
import { mkdtempSync, rmSync, renameSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { save } from '../../src/engine/save.js';
import { openSink } from '../../src/engine/sink.js';
import { MigState } from '../../src/fsm/index.js';
import { extractStreamFile } from '../../src/qemu/extract.js';
import { StreamWriter, writableSink } from '../../src/qemu/writer.js';
import { createWriteStream } from 'node:fs';
import { createSimDevice } from '../../src/vfio/sim/index.js';
import { cli } from '../qemu/codec-helpers.js';
import { multifdInit, vfioStatePacket, writeMultifdVfioMainChannel } from '../helpers/multifd-packets.js';

const work = mkdtempSync(path.join(tmpdir(), 'migbridge-restore-multifd-'));
test.after.always(() => rmSync(work, { recursive: true, force: true }));

test('restore -i MAIN with its channel captures beside it: the device gets the state that went over multifd (checksum verified); without them restore refuses naming the device, and the destination is reset', async (t) => {
  // The state a simulated device produces, saved the ordinary way and taken out again.
  const src = createSimDevice('sim:id=src,seed=77,size=3MiB');
  const plain = path.join(work, 'plain.mig');
  await save({ devices: [src], sink: await openSink({ file: plain }) });
  const ex = await extractStreamFile(plain, { outDir: path.join(work, 'x') });
  const dev = ex.vfio!.devices[0]!;
  const data = await readFile(dev.dataFile);
  t.is(data.length, dev.dataBytes);
  await src.setState(MigState.RUNNING);
  await src.close();

  // QEMU 10 multifd framing: main stream with dummies; 2 channels, packets of at most 1 MiB.
  const main = path.join(work, 'tee.mig');
  const out = createWriteStream(main);
  const w = new StreamWriter(writableSink(out));
  await writeMultifdVfioMainChannel(w, 7, dev.idstr);
  await w.flush();
  await new Promise<void>((resolve) => out.end(resolve));
  const pieces: Buffer[] = [];
  for (let off = 0; off < data.length; off += 1 << 20) pieces.push(data.subarray(off, off + (1 << 20)));
  const config = Buffer.concat([Buffer.from('ffffffffef100002', 'hex'), Buffer.from([0, 0, 0, 1]), Buffer.alloc(256 + 16), Buffer.from('ffffffffef100001', 'hex')]);
  const packets = [...pieces.map((p, i) => vfioStatePacket(dev.idstr, i, 0, p)), vfioStatePacket(dev.idstr, pieces.length, 1, config)];
  await writeFile(`${main}.multifd-0`, Buffer.concat([multifdInit(0), ...packets.filter((_, i) => i % 2 === 0)]));
  await writeFile(`${main}.multifd-1`, Buffer.concat([multifdInit(1), ...packets.filter((_, i) => i % 2 === 1)]));

  const ok = await cli(['restore', '-i', main, '--device', 'sim:id=dst,size=3MiB', '--output=json']);
  t.is(ok.code, 0, ok.stderr);
  const report = JSON.parse(ok.stdout) as { devices: { idstr: string; bytes: number; ok: boolean; verified?: boolean }[] };
  t.like(report.devices[0], { idstr: dev.idstr, bytes: data.length, ok: true, verified: true });

  // Without the channels: refused at the FULL dummy, naming the device, before it is touched.
  renameSync(`${main}.multifd-0`, path.join(work, 'away-0'));
  const refused = await cli(['restore', '-i', main, '--device', 'sim:id=dst2,size=3MiB', '--output=json']);
  t.is(refused.code, 1);
  t.regex(refused.stderr, /channel 0 is missing/, 'a channel capture missing is named');
  renameSync(`${main}.multifd-1`, path.join(work, 'away-1'));
  const none = await cli(['restore', '-i', main, '--device', 'sim:id=dst3,size=3MiB', '--output=json']);
  t.is(none.code, 1);
  t.regex(none.stderr, new RegExp(`ESTREAM_UNSUPPORTED.*state of ${dev.idstr.replace('/', '\\/')} went over multifd channels`));
  // Read whole before any device is touched (restore -i reads a file twice): nothing to reset.
  t.regex(none.stderr, /restoring device dst3 from .*refused before any device was touched/);
});
