// Save/restore round trips on simulated devices (real pipe data_fds fed by producer
// threads), the stream checked through the codec, and every simulator fault against
// the failure policy: sources back to RUNNING, no complete-looking output, typed errors.
import test from 'ava';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, truncateSync, copyFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { MigState } from '../../src/fsm/index.js';
import { MigbridgeError } from '../../src/errors.js';
import { restore, RestoreFailedError } from '../../src/engine/restore.js';
import { save, SaveRefusedError, type SaveOptions } from '../../src/engine/save.js';
import { openSink } from '../../src/engine/sink.js';
import { inspectStreamFile } from '../../src/qemu/summary.js';
import { readStreamFile, StreamError } from '../../src/qemu/index.js';
import { createSimDevice, type SimDevice } from '../../src/vfio/sim/index.js';

const MiB = 1 << 20;
const work = mkdtempSync(path.join(tmpdir(), 'migbridge-engine-'));
test.after.always(() => rmSync(work, { recursive: true, force: true }));
let serial = 0;
const streamPath = (name: string) => path.join(work, `${name}-${serial++}.mig`);

function sims(n: number, spec: string, seedBase: number): SimDevice[] {
  return Array.from({ length: n }, (_, i) => createSimDevice(`sim:seed=${seedBase + i},${spec}`));
}

async function closeAll(devs: SimDevice[]): Promise<void> {
  await Promise.all(devs.map((d) => d.close()));
}

async function saveTo(file: string, devices: SimDevice[], extra: Partial<SaveOptions> = {}) {
  return save({ devices, sink: await openSink({ file }), ...extra });
}

/** Saves n devices, inspects the stream, restores into n fresh devices and checks each digest. */
async function roundTrip(t: import('ava').ExecutionContext, n: number, spec: string, opts: Partial<SaveOptions> = {}) {
  const file = streamPath('rt');
  const src = sims(n, spec, 1);
  const dst = sims(n, spec, 5000);
  try {
    const saved = await saveTo(file, src, opts);
    t.is(saved.devices.length, n);
    for (const s of src) t.is(await s.state(), MigState.STOP, `${s.id} ends in STOP`);
    // The stream reads back through the codec: one vfio device per source, byte counts exact.
    const inspected = await inspectStreamFile(file);
    t.is(inspected.vfio.length, n);
    t.is(inspected.records[inspected.records.length - 1]!.kind, 'VMDESCRIPTION');
    inspected.vfio.forEach((v, i) => t.is(v.dataBytes, saved.devices[i]!.bytes, v.idstr));
    t.is(statSync(file).size, saved.streamBytes);
    const restored = await restore({ events: readStreamFile(file), devices: dst });
    t.true(restored.ok);
    for (let i = 0; i < n; i++) {
      t.true(dst[i]!.resumeResult?.verified, `${dst[i]!.id} verified its checksum on leaving RESUMING`);
      t.is(dst[i]!.stateDigest(), src[i]!.stateDigest(), `${dst[i]!.id} holds ${src[i]!.id}'s state`);
      t.is(await dst[i]!.state(), MigState.RUNNING);
    }
    return saved;
  } finally {
    await closeAll([...src, ...dst]);
  }
}

test.serial('round trip: 1 device, empty state', async (t) => {
  await roundTrip(t, 1, 'size=0');
});

test.serial('round trip: 1 device, 512 MiB', async (t) => {
  const r = await roundTrip(t, 1, 'size=512MiB');
  t.true(r.totalBytes >= 512 * MiB);
});

test.serial('round trip: 8 devices with PRE_COPY and P2P', async (t) => {
  const r = await roundTrip(t, 8, 'size=8MiB,precopy=4MiB,flags=7', { precopy: true });
  t.true(r.p2p);
  t.true(r.precopyRounds >= 1);
  for (const d of r.devices) t.true(d.precopyBytes >= 4 * MiB, `${d.id} sent its initial bytes in PRE_COPY`);
});

test.serial('round trip: 32 devices without PRE_COPY', async (t) => {
  const r = await roundTrip(t, 32, 'size=1MiB');
  t.is(r.devices.length, 32);
  for (const d of r.devices) t.is(d.precopyBytes, 0);
});

test.serial('round trip: devices without P2P (flags stop-copy+pre-copy) skip the P2P stop', async (t) => {
  const r = await roundTrip(t, 3, 'size=2MiB,precopy=1MiB,flags=stop-copy+pre-copy', { precopy: true });
  t.false(r.p2p);
});

test.serial('round trip: STOP_COPY-only devices (flags 1) with --precopy asked', async (t) => {
  const r = await roundTrip(t, 2, 'size=2MiB,flags=1', { precopy: true });
  t.false(r.p2p);
  t.is(r.precopyRounds, 0);
});

test.serial('round trip: interleaved stop-copy framing (PART chunks across devices, bare END)', async (t) => {
  const r = await roundTrip(t, 4, 'size=4MiB,rate=200MiB/s', { interleave: true });
  t.is(r.devices.length, 4);
});

test.serial('stream layout: START per device, PART with INIT_DATA_SENT, END with stop-copy data, EOF', async (t) => {
  const file = streamPath('layout');
  const src = sims(2, 'size=1MiB,precopy=512KiB', 1);
  try {
    await saveTo(file, src, { precopy: true });
    const kinds: string[] = [];
    const markers: string[] = [];
    for await (const ev of readStreamFile(file)) {
      if (ev.type === 'section') kinds.push(`${ev.kind}:${ev.section.sectionId}`);
      if (ev.type === 'vfio-marker') markers.push(ev.marker);
      if (ev.type === 'eof') kinds.push('EOF');
    }
    t.deepEqual(kinds.slice(0, 2), ['START:1', 'START:2'], 'section ids from 1 (QEMU finds a PART/END by it; id 0 is every absent handler\'s)');
    t.true(kinds.includes('PART:1') && kinds.includes('PART:2'));
    t.deepEqual(kinds.filter((k) => k.startsWith('END')).sort(), ['END:1', 'END:2']);
    t.is(kinds[kinds.length - 1], 'EOF');
    t.is(markers.filter((m) => m === 'DEV_INIT_DATA_SENT').length, 2, 'one INIT_DATA_SENT per precopy device');
    t.is(markers.filter((m) => m === 'DEV_SETUP_STATE').length, 2);
    const head = readFileSync(file).subarray(0, 8);
    t.is(head.toString('hex'), '5145564d00000003');
  } finally {
    await closeAll(src);
  }
});

function assertNoOutput(t: import('ava').ExecutionContext, file: string) {
  t.false(existsSync(file), 'no output file after a failed save');
  t.deepEqual(readdirSync(path.dirname(file)).filter((f) => f.includes(path.basename(file))), [], 'no partial file left');
}

test.serial('fault eio@1MiB: save fails naming the device and errno; sources back to RUNNING; no output', async (t) => {
  const file = streamPath('eio');
  const src = [...sims(3, 'size=4MiB', 1), createSimDevice('sim:id=broken,seed=9,size=4MiB,fail=eio@1MiB')];
  try {
    const e = await t.throwsAsync(saveTo(file, src), { instanceOf: MigbridgeError });
    t.is(e?.device, 'broken');
    t.is(e?.errno, 5);
    t.regex(e!.message, /broken/);
    assertNoOutput(t, file);
    for (const d of src) t.is(await d.state(), MigState.RUNNING, `${d.id} back to RUNNING`);
  } finally {
    await closeAll(src);
  }
});

test.serial('fault error@stop-copy: the device ends in ERROR, save fails, reset brings it back to RUNNING', async (t) => {
  const file = streamPath('err');
  const src = [createSimDevice('sim:id=ok,seed=1,size=1MiB'), createSimDevice('sim:id=dies,seed=2,size=1MiB,fail=error@stop-copy')];
  try {
    const e = await t.throwsAsync(saveTo(file, src), { instanceOf: MigbridgeError });
    t.is(e?.device, 'dies');
    t.regex(e!.message, /ERROR/);
    assertNoOutput(t, file);
    for (const d of src) t.is(await d.state(), MigState.RUNNING);
  } finally {
    await closeAll(src);
  }
});

test.serial('fault stall@1MiB: a stalled device fails the save by the read deadline instead of hanging', async (t) => {
  const file = streamPath('stall');
  const src = [createSimDevice('sim:id=stuck,seed=1,size=4MiB,fail=stall@1MiB'), ...sims(2, 'size=2MiB', 2)];
  try {
    const e = await t.throwsAsync(saveTo(file, src, { readTimeoutMs: 3000 }), { instanceOf: MigbridgeError });
    t.is(e?.device, 'stuck');
    t.regex(e!.code, /ETIME/);
    assertNoOutput(t, file);
    for (const d of src) t.is(await d.state(), MigState.RUNNING);
  } finally {
    await closeAll(src);
  }
});

test.serial('fault slow-stop@300ms: the save completes and the measured downtime includes the slow STOP', async (t) => {
  const src = [createSimDevice('sim:id=slow,seed=1,size=1MiB,fail=slow-stop@300ms'), ...sims(3, 'size=1MiB', 2)];
  const dst = sims(4, 'size=1MiB', 100);
  const file = streamPath('slow');
  try {
    const r = await saveTo(file, src);
    t.true(r.downtime.actualMs >= 250, `downtime ${r.downtime.actualMs} ms`);
    const restored = await restore({ events: readStreamFile(file), devices: dst });
    t.true(restored.ok);
  } finally {
    await closeAll([...src, ...dst]);
  }
});

test.serial('fault bad-resume: that device fails, every device is reset (all or nothing); error reports all', async (t) => {
  const file = streamPath('badresume');
  const src = sims(3, 'size=2MiB', 1);
  const dst = [createSimDevice('sim:id=d0,seed=50,size=2MiB'), createSimDevice('sim:id=picky,seed=51,size=2MiB,fail=bad-resume'), createSimDevice('sim:id=d2,seed=52,size=2MiB')];
  try {
    await saveTo(file, src);
    const e = await t.throwsAsync(restore({ events: readStreamFile(file), devices: dst }), { instanceOf: RestoreFailedError });
    const byId = new Map(e!.report.devices.map((d) => [d.id, d]));
    t.false(byId.get('picky')!.ok);
    t.is(byId.get('picky')!.error?.errno, 22);
    t.truthy(byId.get('picky')!.recovery);
    // All or nothing: the devices that accepted their state are reset too.
    for (const id of ['d0', 'd2']) {
      t.false(byId.get(id)!.ok, id);
      t.is(byId.get(id)!.error?.code, 'ERESTORE_PEER', id);
      t.is(byId.get(id)!.recovery, 'reset', id);
    }
    for (const d of dst) t.is(await d.state(), MigState.RUNNING);
  } finally {
    await closeAll([...src, ...dst]);
  }
});

test.serial('--max-downtime: refused before any stop, devices stay RUNNING, no output', async (t) => {
  const file = streamPath('downtime');
  const src = sims(2, 'size=64MiB', 1);
  try {
    const e = await t.throwsAsync(saveTo(file, src, { maxDowntimeMs: 1 }), { instanceOf: SaveRefusedError });
    t.regex(e!.message, /estimated downtime [\d.]+ ms .* exceeds --max-downtime 1 ms/);
    assertNoOutput(t, file);
    for (const d of src) t.is(await d.state(), MigState.RUNNING);
  } finally {
    await closeAll(src);
  }
});

test.serial('--resume-source leaves the sources RUNNING after a complete save', async (t) => {
  const src = sims(2, 'size=1MiB', 1);
  try {
    await saveTo(streamPath('resume-src'), src, { resumeSource: true });
    for (const d of src) t.is(await d.state(), MigState.RUNNING);
  } finally {
    await closeAll(src);
  }
});

test.serial('restore from a truncated stream: typed error with offset, every device reset to RUNNING', async (t) => {
  const file = streamPath('trunc');
  const src = sims(2, 'size=4MiB', 1);
  const dst = sims(2, 'size=4MiB', 70);
  try {
    await saveTo(file, src);
    const cut = streamPath('trunc-cut');
    copyFileSync(file, cut);
    truncateSync(cut, Math.floor(statSync(file).size * 0.6));
    const e = await t.throwsAsync(restore({ events: readStreamFile(cut), devices: dst }), { instanceOf: MigbridgeError });
    t.true(e?.cause instanceof StreamError, 'the decoder error is the cause');
    t.true(typeof e?.offset === 'number');
    t.truthy(e?.section);
    t.regex(e!.device!, new RegExp(dst.map((d) => d.id).join('|')), 'the error names the device being restored');
    for (const d of dst) t.is(await d.state(), MigState.RUNNING);
  } finally {
    await closeAll([...src, ...dst]);
  }
});

test.serial('restore matches sections by --map before idstr and order', async (t) => {
  const file = streamPath('map');
  const src = sims(2, 'size=1MiB', 1);
  const dst = sims(2, 'size=1MiB', 40);
  try {
    const saved = await saveTo(file, src);
    const map = new Map([
      [saved.devices[0]!.idstr, 1],
      [saved.devices[1]!.idstr, 0],
    ]);
    await restore({ events: readStreamFile(file), devices: dst, map });
    t.is(dst[1]!.stateDigest(), src[0]!.stateDigest());
    t.is(dst[0]!.stateDigest(), src[1]!.stateDigest());
  } finally {
    await closeAll([...src, ...dst]);
  }
});

test.serial('restore with fewer devices than sections fails with a matching error and resets the devices', async (t) => {
  const file = streamPath('fewer');
  const src = sims(2, 'size=1MiB', 1);
  const dst = sims(1, 'size=1MiB', 40);
  try {
    await saveTo(file, src);
    const e = await t.throwsAsync(restore({ events: readStreamFile(file), devices: dst }), { instanceOf: MigbridgeError });
    t.is(e?.code, 'EMATCH');
    t.is(await dst[0]!.state(), MigState.RUNNING);
  } finally {
    await closeAll([...src, ...dst]);
  }
});
