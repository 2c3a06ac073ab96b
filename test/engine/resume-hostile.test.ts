// Hostile resume streams (issue 10 item 6): each is refused with a typed error naming the
// section and the stream offset, and every destination is treated alike: reset, back to
// RUNNING, none loaded the stream's state. The streams are real saves of simulated
// devices, re-written record by record with one change each.
import test from 'ava';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { RestoreFailedError, restore } from '../../src/engine/restore.js';
import { save } from '../../src/engine/save.js';
import { openSink } from '../../src/engine/sink.js';
import { MigbridgeError } from '../../src/errors.js';
import { MigState } from '../../src/fsm/index.js';
import { type StreamEvent, StreamWriter, readStreamFile } from '../../src/qemu/index.js';
import { createSimDevice, type SimDevice } from '../../src/vfio/sim/index.js';

const work = mkdtempSync(path.join(tmpdir(), 'migbridge-hostile-'));
test.after.always(() => rmSync(work, { recursive: true, force: true }));
let serial = 0;
const file = (name: string) => path.join(work, `${name}-${serial++}.mig`);

const IDSTR0 = '0000:00:04.0/vfio';
const IDSTR1 = '0000:00:05.0/vfio';

/** Two sim sources (seeds 1, 2; 1 MiB, with precopy) saved to a file; their digests. */
async function baseStream(): Promise<{ file: string; digests: bigint[] }> {
  const src = [createSimDevice('sim:seed=1,size=1MiB,precopy=256KiB'), createSimDevice('sim:seed=2,size=1MiB,precopy=256KiB')];
  const out = file('base');
  try {
    await save({ devices: src, sink: await openSink({ file: out }), precopy: true });
    return { file: out, digests: src.map((d) => d.stateDigest()) };
  } finally {
    await Promise.all(src.map((d) => d.close()));
  }
}

/** Re-writes `from` into a new file, each event through `edit` (which returns what to write instead). */
async function rewrite(from: string, edit: (ev: StreamEvent) => StreamEvent[] | Promise<StreamEvent[]>, w2?: (w: StreamWriter, ev: StreamEvent) => Promise<boolean>): Promise<string> {
  const out = file('edited');
  const sink = await openSink({ file: out });
  const w = new StreamWriter(sink);
  for await (const ev of readStreamFile(from)) {
    if (w2 && (await w2(w, ev))) continue;
    for (const e of await edit(ev)) await w.event(e);
  }
  await w.flush();
  await sink.commit();
  return out;
}

function destinations(): SimDevice[] {
  return [createSimDevice('sim:id=d0,seed=90,size=1MiB'), createSimDevice('sim:id=d1,seed=91,size=1MiB')];
}

/** Restore must fail with `code`, naming the section and an offset; every destination reset, RUNNING, nothing loaded. */
async function refused(t: import('ava').ExecutionContext, stream: string, code: string, extra: { maxDeviceBytes?: number } = {}): Promise<MigbridgeError> {
  const dst = destinations();
  const own = dst.map((d) => d.stateDigest());
  try {
    const e = await t.throwsAsync(restore({ events: readStreamFile(stream), devices: dst, ...extra }));
    t.true(e instanceof MigbridgeError, String(e));
    const err = e as MigbridgeError;
    t.false(err instanceof RestoreFailedError, 'a stream error, not a per-device failure');
    t.is(err.code, code, err.message);
    t.is(typeof err.offset, 'number', `offset named: ${err.message}`);
    t.truthy(err.section, `section named: ${err.message}`);
    t.deepEqual(
      (err.recovery as { device: string; action: string; ok: boolean }[]).map((r) => [r.device, r.action, r.ok]),
      [['d0', 'reset', true], ['d1', 'reset', true]],
    );
    for (const [i, d] of dst.entries()) {
      t.is(await d.state(), MigState.RUNNING, d.id);
      t.is(d.loads, 0, `${d.id} loaded nothing`);
      t.is(d.stateDigest(), own[i], `${d.id} keeps its own state`);
    }
    return err;
  } finally {
    await Promise.all(dst.map((d) => d.close()));
  }
}

test('two sections with the same idstr and different instance ids go to two devices (not merged)', async (t) => {
  const base = await baseStream();
  // Device 1's sections become "IDSTR0 instance 1".
  const stream = await rewrite(base.file, (ev) =>
    ev.type === 'section' && ev.section.idstr === IDSTR1 ? [{ ...ev, section: { ...ev.section, idstr: IDSTR0, instanceId: 1 } }] : [ev],
  );
  const dst = destinations();
  try {
    const r = await restore({ events: readStreamFile(stream), devices: dst });
    t.true(r.ok);
    t.deepEqual(r.devices.map((d) => [d.id, d.idstr, d.verified]), [['d0', IDSTR0, true], ['d1', IDSTR0, true]]);
    t.is(dst[0]!.stateDigest(), base.digests[0]);
    t.is(dst[1]!.stateDigest(), base.digests[1]);
  } finally {
    await Promise.all(dst.map((d) => d.close()));
  }
});

test('two START sections for the same idstr and instance: refused at the second, every device reset', async (t) => {
  const base = await baseStream();
  const stream = await rewrite(base.file, (ev) => (ev.type === 'section' && ev.section.idstr === IDSTR1 ? [{ ...ev, section: { ...ev.section, idstr: IDSTR0 } }] : [ev]));
  const e = await refused(t, stream, 'ESTREAM_FORMAT');
  t.regex(e.message, /two START sections for 0000:00:04\.0\/vfio instance 0/);
});

test('a section id started twice: refused naming it', async (t) => {
  const base = await baseStream();
  let starts = 0;
  const stream = await rewrite(base.file, (ev) => (ev.type === 'section' && ev.kind === 'START' && starts++ === 1 ? [{ ...ev, section: { ...ev.section, sectionId: 1 } }] : [ev]));
  const e = await refused(t, stream, 'ESTREAM_FORMAT');
  t.regex(e.message, /section id 1 .* started a second time/);
});

test('trailing data: a PART section after the device\'s END is refused, every device reset', async (t) => {
  const base = await baseStream();
  let endOf0: number | undefined;
  const stream = await rewrite(base.file, (ev) => [ev], async (w, ev) => {
    // After device 0's END section closes, one more PART with 4 KiB of data for it.
    if (ev.type === 'section' && ev.kind === 'END' && ev.section.idstr === IDSTR0) endOf0 = ev.section.sectionId;
    if (ev.type === 'footer' && endOf0 !== undefined && ev.section.sectionId === endOf0) {
      await w.event(ev);
      await w.sectionPart(ev.section.sectionId);
      await w.vfioData(Buffer.alloc(4096, 7));
      await w.vfioMarker('END_OF_STATE');
      await w.endSection();
      endOf0 = undefined;
      return true;
    }
    return false;
  });
  const e = await refused(t, stream, 'ESTREAM_FORMAT');
  t.regex(e.message, /trailing data: PART section for 0000:00:04\.0\/vfio after its END/);
});

test('a DATA_STATE record larger than the destination\'s MIG_DATA_SIZE is refused before its bytes are written', async (t) => {
  const base = await baseStream();
  const size = (1 << 20) * 2;
  let done = false;
  let skipping = false;
  const stream = await rewrite(base.file, (ev) => [ev], async (w, ev) => {
    // Device 0's first record becomes a 2 MiB one (the destination's whole state is ~1 MiB).
    if (!done && ev.type === 'vfio-data' && ev.section.idstr === IDSTR0) {
      done = skipping = true;
      await w.vfioData(Buffer.alloc(size, 1));
      return true;
    }
    if (skipping && ev.type === 'vfio-data-chunk') return true;
    skipping = false;
    return false;
  });
  const e = await refused(t, stream, 'ESTREAM_LIMIT');
  t.regex(e.message, /DATA_STATE record of 2097152 bytes .* larger than device d0's whole state \(MIG_DATA_SIZE \d+\)/);
});

test('with a preflight pass (a file read twice), hostile streams are refused before any device changes state', async (t) => {
  const base = await baseStream();
  const dup = await rewrite(base.file, (ev) => (ev.type === 'section' && ev.section.idstr === IDSTR1 ? [{ ...ev, section: { ...ev.section, idstr: IDSTR0 } }] : [ev]));
  for (const [stream, code, why] of [
    [dup, 'ESTREAM_FORMAT', /two START sections/],
    [base.file, 'ESTREAM_LIMIT', /more than 100000 bytes/],
  ] as const) {
    // A state file is written at every state change: none may appear.
    const files = [0, 1].map((i) => path.join(work, `pre-${serial++}-${i}.state`));
    const dst = files.map((f, i) => createSimDevice(`sim:id=p${i},seed=${90 + i},size=1MiB,state-file=${f}`));
    try {
      const e = await t.throwsAsync(
        restore({ events: readStreamFile(stream), preflight: readStreamFile(stream), devices: dst, maxDeviceBytes: code === 'ESTREAM_LIMIT' ? 100_000 : undefined }),
        { instanceOf: MigbridgeError },
      );
      t.is(e!.code, code);
      t.regex(e!.message, why);
      t.regex(e!.message, /refused before any device was touched/);
      t.is(typeof e!.offset, 'number');
      t.is(e!.recovery, undefined, 'nothing to recover');
      for (const f of files) t.false(existsSync(f), `${f}: no device changed state`);
    } finally {
      await Promise.all(dst.map((d) => d.close()));
    }
  }
});

test('device data past a configured cap (maxDeviceBytes) is refused', async (t) => {
  const base = await baseStream();
  const e = await refused(t, base.file, 'ESTREAM_LIMIT', { maxDeviceBytes: 100_000 });
  t.regex(e.message, /more than 100000 bytes of device data/);
});

test('a section for which no device was given: refused with its offset, every device reset', async (t) => {
  const base = await baseStream();
  const dst = [createSimDevice('sim:id=only,seed=90,size=1MiB')];
  try {
    const e = await t.throwsAsync(restore({ events: readStreamFile(base.file), devices: dst }), { instanceOf: MigbridgeError });
    t.is(e!.code, 'EMATCH');
    t.is(e!.section, IDSTR1);
    t.is(typeof e!.offset, 'number');
    t.is(await dst[0]!.state(), MigState.RUNNING);
    t.is(dst[0]!.loads, 0);
  } finally {
    await Promise.all(dst.map((d) => d.close()));
  }
});

test('a device given no section: the error names the offset where the stream ended', async (t) => {
  const base = await baseStream();
  const dst = [...destinations(), createSimDevice('sim:id=spare,seed=92,size=1MiB')];
  try {
    const e = await t.throwsAsync(restore({ events: readStreamFile(base.file), devices: dst }), { instanceOf: MigbridgeError });
    t.is(e!.code, 'EMATCH');
    t.regex(e!.message, /no VFIO section for device\(s\) spare \(stream ended at offset \d+\)/);
    t.true(e!.offset! > 0);
    for (const d of dst) t.is(d.loads, 0, d.id);
  } finally {
    await Promise.all(dst.map((d) => d.close()));
  }
});

test('one device rejecting its data (bytes after its END record): every destination reset, report seconds never negative', async (t) => {
  const base = await baseStream();
  // A 16-byte DATA_STATE record after the last one of device 1's END section: the
  // simulator refuses it on the exit from RESUMING ("data after the end").
  let inEnd1 = false;
  const trailing = await rewrite(base.file, (ev) => [ev], async (w, ev) => {
    if (ev.type === 'section' && ev.kind === 'END' && ev.section.idstr === IDSTR1) inEnd1 = true;
    if (inEnd1 && ev.type === 'vfio-marker' && ev.marker === 'END_OF_STATE') {
      await w.vfioData(Buffer.alloc(16, 0xee));
      inEnd1 = false;
    }
    return false;
  });
  const dst = destinations();
  try {
    const e = await t.throwsAsync(restore({ events: readStreamFile(trailing), devices: dst }), { instanceOf: RestoreFailedError });
    const byId = new Map(e!.report.devices.map((d) => [d.id, d]));
    t.is(byId.get('d1')!.error?.errno, 22, 'd1 refused its data on the exit from RESUMING');
    t.is(byId.get('d0')!.error?.code, 'ERESTORE_PEER', 'd0 is reset because d1 failed');
    for (const d of dst) {
      t.is(byId.get(d.id)!.recovery, 'reset', d.id);
      t.is(await d.state(), MigState.RUNNING, d.id);
    }
    for (const d of e!.report.devices) t.true(d.seconds >= 0, `${d.id} seconds ${d.seconds}`);
    t.true(e!.report.seconds >= 0);
  } finally {
    await Promise.all(dst.map((d) => d.close()));
  }
});

test('every device failing: the report\'s seconds are not negative', async (t) => {
  const base = await baseStream();
  const dst = [createSimDevice('sim:id=p0,size=1MiB,fail=bad-resume'), createSimDevice('sim:id=p1,size=1MiB,fail=bad-resume')];
  try {
    const e = await t.throwsAsync(restore({ events: readStreamFile(base.file), devices: dst }), { instanceOf: RestoreFailedError });
    for (const d of e!.report.devices) {
      t.false(d.ok);
      t.true(d.seconds >= 0, `${d.id} seconds ${d.seconds}`);
    }
  } finally {
    await Promise.all(dst.map((d) => d.close()));
  }
});
