// `migbridge save` / `migbridge restore` (the real CLI, run as a child process) on the
// kernel's mtty devices: UART state written through BAR0 before the save is read back
// from other devices after the restore; several devices in one run; a corrupted and a
// truncated stream fail with an error naming the device, which is reset and usable.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { laneEnv, migbridge } from './lane.js';
import { MTTY_MAGIC, State, VFIO_DEVICE_RESET, barRead1, barWrite1, closeAll, getState, openViaGroup, readAll, setState } from './raw.js';
import { ioctlSync } from '../../src/native/index.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mb-kernel-cli-'));


/** UART contents for one device: scratch registers per port and RX FIFO text on port 0. */
interface Uart { scr: number[]; lcr: number; fifo: string }

function withGroup<T>(uuid: string, fn: (dev: number) => T): T {
  const g = openViaGroup(uuid);
  try {
    return fn(g.device);
  } finally {
    closeAll(g.container, g.group, g.device);
  }
}

function loadUart(uuid: string, u: Uart): void {
  withGroup(uuid, (dev) => {
    ioctlSync(dev, VFIO_DEVICE_RESET, 0);
    barWrite1(dev, 0, 2, 0x07); // FCR: enable and clear the FIFO, so only our bytes are queued
    barWrite1(dev, 0, 3, u.lcr);
    u.scr.forEach((v, port) => barWrite1(dev, port, 7, v));
    for (const ch of Buffer.from(u.fifo)) barWrite1(dev, 0, 0, ch);
  });
}

/** Scribbles over a destination so a restore that loads nothing cannot pass. */
function scribble(uuid: string, ports: number): void {
  loadUart(uuid, { scr: Array.from({ length: ports }, () => 0xee), lcr: 0x00, fifo: 'zz' });
}

function readUart(uuid: string, ports: number): Uart & { state: number } {
  return withGroup(uuid, (dev) => {
    const state = getState(dev);
    const scr = Array.from({ length: ports }, (_, p) => barRead1(dev, p, 7));
    const lcr = barRead1(dev, 0, 3);
    let fifo = '';
    for (let i = 0; i < 16 && barRead1(dev, 0, 5) & 1; i++) fifo += String.fromCharCode(barRead1(dev, 0, 0));
    return { state, scr, lcr, fifo };
  });
}

/** A device is usable: reset returns it to RUNNING and a full STOP_COPY save works. */
function assertUsable(t: ExecutionContext, uuid: string, bytes: number): void {
  withGroup(uuid, (dev) => {
    t.is(getState(dev), State.RUNNING, `${uuid} is back in RUNNING`);
    const fd = setState(dev, State.STOP_COPY);
    const s = readAll(fd);
    fs.closeSync(fd);
    t.is(s.length, bytes, `${uuid} saves a full stream again`);
    t.is(setState(dev, State.RUNNING), -1);
  });
}

test.serial('save one mtty-1 and restore it onto another through the CLI; UART state read back', async (t) => {
  const { mtty1 } = laneEnv();
  const [src, dst] = [mtty1[0]!, mtty1[1]!];
  const u: Uart = { scr: [0x5a], lcr: 0x1b, fifo: 'hello' };
  loadUart(src, u);
  scribble(dst, 1);
  const file = path.join(tmp, 'one.mig');
  const save = await migbridge('save', '--device', `mdev:${src}`, '-o', file, '--output=json');
  t.is(save.code, 0, save.stderr);
  const stream = fs.readFileSync(file);
  t.true(stream.indexOf(MTTY_MAGIC) > 0, 'the stream carries the mtty state');
  const restore = await migbridge('restore', '-i', file, '--device', `mdev:${dst}`, '--output=json');
  t.is(restore.code, 0, restore.stderr);
  t.deepEqual(readUart(dst, 1), { ...u, state: State.RUNNING });
});

test.serial('parallel save/restore of 5 mtty devices (3 mtty-1 + 2 mtty-2), each with its own UART contents', async (t) => {
  const { mtty1, mtty2 } = laneEnv();
  const pairs = [
    { src: mtty1[0]!, dst: mtty1[3]!, ports: 1 },
    { src: mtty1[1]!, dst: mtty1[4]!, ports: 1 },
    { src: mtty1[2]!, dst: mtty1[5]!, ports: 1 },
    { src: mtty2[0]!, dst: mtty2[2]!, ports: 2 },
    { src: mtty2[1]!, dst: mtty2[3]!, ports: 2 },
  ].map((p, i) => ({ ...p, uart: { scr: Array.from({ length: p.ports }, (_, k) => 0x10 + 16 * i + k), lcr: 0x03 + i, fifo: `dev${i}`.repeat(i + 1).slice(0, 15) } }));
  for (const p of pairs) {
    loadUart(p.src, p.uart);
    scribble(p.dst, p.ports);
  }
  const file = path.join(tmp, 'five.mig');
  const save = await migbridge('save', ...pairs.flatMap((p) => ['--device', `mdev:${p.src}`]), '-o', file, '--output=json');
  t.is(save.code, 0, save.stderr);
  const restore = await migbridge('restore', '-i', file, ...pairs.flatMap((p) => ['--device', `mdev:${p.dst}`]), '--output=json');
  t.is(restore.code, 0, restore.stderr);
  for (const p of pairs) t.deepEqual(readUart(p.dst, p.ports), { ...p.uart, state: State.RUNNING }, `${p.src} -> ${p.dst}`);
});

// Found by this lane and fixed in the engine (10ddfba): recovery used SET RUNNING on a
// device left in RESUMING, and after mtty's EFAULT on the bad header the kept bytes were
// then LOADED; a truncated stream's error named the section but not the device.
for (const damage of ['corrupted', 'truncated'] as const) {
  test.serial(`restore of a ${damage} stream fails naming the device; the device is reset and usable`, async (t) => {
    const { mtty1 } = laneEnv();
    const [src, dst] = [mtty1[0]!, mtty1[1]!];
    loadUart(src, { scr: [0x42], lcr: 0x03, fifo: 'ok' });
    const good = path.join(tmp, `${damage}-good.mig`);
    const save = await migbridge('save', '--device', `mdev:${src}`, '-o', good, '--output=json');
    t.is(save.code, 0, save.stderr);
    const bytes = fs.readFileSync(good);
    const at = bytes.indexOf(MTTY_MAGIC);
    t.true(at > 0, 'mtty magic found in the stream');
    let bad: Buffer;
    if (damage === 'corrupted') {
      bad = Buffer.from(bytes);
      bad[at] = bad[at]! ^ 0xff; // mtty rejects the header (write() -> EFAULT)
    } else {
      bad = bytes.subarray(0, at + 30); // cut inside the device's state
    }
    const file = path.join(tmp, `${damage}.mig`);
    fs.writeFileSync(file, bad);
    scribble(dst, 1);
    const r = await migbridge('restore', '-i', file, '--device', `mdev:${dst}`, '--output=json');
    const after = readUart(dst, 1);
    t.log(`after the failed restore: state ${after.state}, SCR 0x${after.scr[0]!.toString(16)}`);
    t.is(r.code, 1, `exit status 1 (stdout ${r.stdout.slice(0, 300)})`);
    t.regex(r.stderr, new RegExp(dst), 'the error names the device');
    t.log(r.stderr.trim().slice(0, 400));
    t.not(after.scr[0], 0x42, 'the damaged state was not loaded');
    assertUsable(t, dst, 60);
  });
}
