// Kernel backend without VFIO on this host: the bytes KernelDevice hands to ioctl (seen
// by a fake kernel built on src/fsm), its error paths on real non-VFIO fds, and device
// spec parsing / sysfs resolution on a fake sysfs tree. The real thing runs in the
// kernel lane (conformance suite against mtty).
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { UsageError } from '../../src/errors.js';
import { FsmError, MigState, transition } from '../../src/fsm/index.js';
import { type IoctlRequest, type IoctlResult, closeSync, pipe } from '../../src/native/index.js';
import { VfioDeviceError } from '../../src/vfio/device.js';
import { KernelDevice } from '../../src/vfio/kernel.js';
import { VfioOpenError, cdevOf, iommuGroupOf, listHostDevices, openDevice, parseDeviceSpec } from '../../src/vfio/open.js';
import * as u from '../../src/vfio/uapi.js';

const DEV_FD = 1000;

/** A device driver in miniature: decodes the feature header like vfio_main.c and follows src/fsm. */
class FakeKernel {
  state = MigState.RUNNING;
  calls: { fd: number; request: number; arg: number[] | number | null }[] = [];
  failNextArcAt: MigState | undefined;
  opened: number[] = [];
  constructor(readonly flags = 7) {}

  async ioctlBatch(reqs: IoctlRequest[]): Promise<IoctlResult[]> {
    return reqs.map((r) => {
      this.calls.push({ fd: r.fd, request: r.request, arg: Buffer.isBuffer(r.arg) ? [...r.arg] : r.arg });
      return this.one(r);
    });
  }

  one(r: IoctlRequest): IoctlResult {
    const err = (errno: number): IoctlResult => ({ ret: -1, errno });
    if (r.request === u.Ioctl.DEVICE_RESET) {
      this.state = MigState.RUNNING;
      return { ret: 0, errno: 0 };
    }
    if (r.request === u.Ioctl.MIG_GET_PRECOPY_INFO) {
      const b = r.arg as Buffer;
      if (b.readUInt32LE(0) < 24) return err(22);
      if (this.state !== MigState.PRE_COPY && this.state !== MigState.PRE_COPY_P2P) return err(22);
      b.writeBigUInt64LE(24n, 8);
      return { ret: 0, errno: 0 };
    }
    if (r.request !== u.Ioctl.DEVICE_FEATURE || r.fd !== DEV_FD) return err(25);
    const b = r.arg as Buffer;
    const argsz = b.readUInt32LE(0);
    const flags = b.readUInt32LE(4);
    if (argsz !== b.length || argsz < 16) return err(22);
    const id = flags & 0xffff;
    const op = flags & ~0xffff;
    if (id === u.Feature.MIGRATION && op === u.FeatureFlag.GET) {
      b.writeBigUInt64LE(BigInt(this.flags), 8);
    } else if (id === u.Feature.MIG_DATA_SIZE && op === u.FeatureFlag.GET) {
      b.writeBigUInt64LE(60n, 8);
    } else if (id === u.Feature.MIG_DEVICE_STATE && op === u.FeatureFlag.GET) {
      b.writeUInt32LE(this.state, 8);
      b.writeInt32LE(-1, 12);
    } else if (id === u.Feature.MIG_DEVICE_STATE && op === u.FeatureFlag.SET) {
      const target = b.readUInt32LE(8);
      if (target === this.state) {
        b.writeInt32LE(-1, 12);
        return { ret: 0, errno: 0 };
      }
      let t;
      try {
        t = transition(this.flags, this.state, target);
      } catch (e) {
        if (e instanceof FsmError) return err(22); // struct copied back with the requested state
        throw e;
      }
      for (const s of t.path) {
        if (s === this.failNextArcAt) {
          this.failNextArcAt = undefined;
          return err(5); // the driver stops at the last good arc
        }
        this.state = s;
      }
      if (t.dataFd) {
        const [rd, wr] = pipe();
        const keep = target === MigState.RESUMING ? wr : rd;
        closeSync(keep === rd ? wr : rd);
        this.opened.push(keep);
        b.writeInt32LE(keep, 12);
      } else b.writeInt32LE(-1, 12);
    } else return err(25);
    return { ret: 0, errno: 0 };
  }
}

test('KernelDevice issues the documented bytes and decodes the answers', async (t) => {
  const k = new FakeKernel(7);
  const dev = new KernelDevice({ id: 'mtty-a', fd: DEV_FD, engine: k, onClose: () => undefined });
  t.is(await dev.migrationFlags(), 7);
  t.deepEqual(k.calls[0], { fd: DEV_FD, request: 0x3b75, arg: [16, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0] });
  t.is(await dev.stopCopySize(), 60n);
  t.deepEqual((k.calls[1]!.arg as number[]).slice(0, 8), [16, 0, 0, 0, 9, 0, 1, 0]);

  const fd = await dev.setState(MigState.PRE_COPY);
  t.deepEqual(k.calls[2], { fd: DEV_FD, request: 0x3b75, arg: [16, 0, 0, 0, 2, 0, 2, 0, 6, 0, 0, 0, 0xff, 0xff, 0xff, 0xff] });
  t.truthy(fd);
  t.is(fd!.fd, k.opened[0]);
  t.is(fd!.direction, 'save');
  t.deepEqual(await dev.precopyInfo(), { initialBytes: 24n, dirtyBytes: 0n });
  t.is(k.calls[3]!.fd, fd!.fd, 'PRECOPY_INFO goes to the data_fd');
  t.is(k.calls[3]!.request, 0x3b79);
  t.deepEqual((k.calls[3]!.arg as number[]).slice(0, 4), [24, 0, 0, 0]);
  t.is(await dev.setState(MigState.STOP_COPY), null, 'same session');
  await t.throwsAsync(() => dev.precopyInfo(), { instanceOf: VfioDeviceError, message: /EINVAL/ });
  await dev.setState(MigState.STOP);
  const e = await t.throwsAsync(() => dev.precopyInfo(), { instanceOf: VfioDeviceError });
  t.is(e!.errno, 22, 'no session: EINVAL without an ioctl on a stale fd');
  await fd!.close();

  const r = await dev.setState(MigState.RESUMING);
  t.is(r!.direction, 'resume');
  await r!.close();
  const before = k.calls.length;
  await dev.reset();
  t.deepEqual(k.calls[before], { fd: DEV_FD, request: 0x3b6f, arg: null });
  t.is(await dev.state(), MigState.RUNNING);
});

test('a failed SET re-reads the actual state (the kernel copies back the requested one)', async (t) => {
  const k = new FakeKernel(7);
  const dev = new KernelDevice({ id: 'mtty-b', fd: DEV_FD, engine: k });
  const e1 = await t.throwsAsync(() => dev.setState(MigState.ERROR), { instanceOf: VfioDeviceError });
  t.is(e1!.errno, 22);
  t.is(e1!.requested, MigState.ERROR);
  t.is(e1!.state, MigState.RUNNING);
  t.is(e1!.device, 'mtty-b');
  t.is(k.calls.at(-1)!.arg instanceof Array && (k.calls.at(-1)!.arg as number[])[6], 1, 'followed by a GET');
  // Fails on the arc into STOP of RUNNING -> RUNNING_P2P -> STOP -> STOP_COPY: stays in RUNNING_P2P.
  k.failNextArcAt = MigState.STOP;
  const e2 = await t.throwsAsync(() => dev.setState(MigState.STOP_COPY), { instanceOf: VfioDeviceError });
  t.is(e2!.errno, 5);
  t.is(e2!.state, MigState.RUNNING_P2P);
  t.regex(e2!.message, /device mtty-b: set state STOP_COPY \(device now in RUNNING_P2P\) failed: EIO/);
  t.deepEqual(e2!.toJSON().state, 'RUNNING_P2P');
});

test('kernel backend on a real non-VFIO fd: ENOTTY naming the device', async (t) => {
  const [r, w] = pipe();
  const dev = new KernelDevice({ id: 'not-vfio', fd: r });
  const e = await t.throwsAsync(() => dev.migrationFlags(), { instanceOf: VfioDeviceError });
  t.is(e!.errno, 25);
  t.is(e!.device, 'not-vfio');
  const e2 = await t.throwsAsync(() => dev.setState(MigState.STOP), { instanceOf: VfioDeviceError });
  t.is(e2!.errno, 25);
  t.is(e2!.state, undefined, 'GET failed too: actual state unknown');
  await dev.close();
  closeSync(w);
  await t.throwsAsync(() => dev.state(), { instanceOf: VfioDeviceError, message: /closed/ });
});

test('device spec parsing', (t) => {
  const o = { sysfs: '/S' };
  t.deepEqual(parseDeviceSpec('pci:0000:00:04.0', o), { kind: 'sysfs', path: '/S/bus/pci/devices/0000:00:04.0', via: 'group' });
  t.deepEqual(parseDeviceSpec('00:04.0', o), { kind: 'sysfs', path: '/S/bus/pci/devices/0000:00:04.0', via: 'group' });
  const uuid = '83b8f4f2-509f-382f-3c1e-e6bfe0fa1001';
  t.deepEqual(parseDeviceSpec(`mdev:${uuid}`, o), { kind: 'sysfs', path: `/S/bus/mdev/devices/${uuid}`, via: 'group' });
  t.deepEqual(parseDeviceSpec(uuid.toUpperCase(), o), { kind: 'sysfs', path: `/S/bus/mdev/devices/${uuid}`, via: 'group' });
  t.deepEqual(parseDeviceSpec(`cdev:mdev:${uuid}`, o), { kind: 'sysfs', path: `/S/bus/mdev/devices/${uuid}`, via: 'cdev' });
  t.deepEqual(parseDeviceSpec('cdev:/dev/vfio/devices/vfio0', o), { kind: 'cdev', path: '/dev/vfio/devices/vfio0' });
  t.deepEqual(parseDeviceSpec('/dev/vfio/devices/vfio3', o), { kind: 'cdev', path: '/dev/vfio/devices/vfio3' });
  t.deepEqual(parseDeviceSpec('/sys/devices/pci0000:00/0000:00:04.0', o), { kind: 'sysfs', path: '/sys/devices/pci0000:00/0000:00:04.0', via: 'group' });
  t.deepEqual(parseDeviceSpec('fd:7', o), { kind: 'fd', fd: 7 });
  t.deepEqual(parseDeviceSpec('sim:size=1MiB', o), { kind: 'sim', spec: 'sim:size=1MiB' });
  t.throws(() => parseDeviceSpec('gpu0', o), { instanceOf: UsageError, message: /not a device spec/ });
  t.throws(() => parseDeviceSpec('fd:x', o), { instanceOf: UsageError });
  t.throws(() => parseDeviceSpec('pci:zz', o), { instanceOf: UsageError });
});

const fakeRoots: string[] = [];
test.after.always(() => fakeRoots.forEach((r) => rmSync(r, { recursive: true, force: true })));

function fakeSysfs(): { sys: string; dev: string; uuid: string } {
  const root = mkdtempSync(join(tmpdir(), 'migbridge-sysfs-'));
  fakeRoots.push(root);
  const sys = join(root, 'sys');
  const uuid = '83b8f4f2-509f-382f-3c1e-e6bfe0fa1001';
  const real = join(sys, 'devices/virtual/mtty/mtty', uuid);
  mkdirSync(join(real, 'vfio-dev/vfio3'), { recursive: true });
  mkdirSync(join(sys, 'kernel/iommu_groups/7'), { recursive: true });
  symlinkSync(join(sys, 'kernel/iommu_groups/7'), join(real, 'iommu_group'));
  mkdirSync(join(sys, 'bus/mdev/devices'), { recursive: true });
  symlinkSync(real, join(sys, 'bus/mdev/devices', uuid));
  const pci = join(sys, 'devices/pci0000:00');
  for (const [addr, drv] of [
    ['0000:00:04.0', 'vfio-pci'],
    ['0000:00:05.0', 'e1000'],
  ] as const) {
    mkdirSync(join(pci, addr), { recursive: true });
    mkdirSync(join(sys, 'bus/pci/drivers', drv), { recursive: true });
    symlinkSync(join(sys, 'bus/pci/drivers', drv), join(pci, addr, 'driver'));
    mkdirSync(join(sys, 'bus/pci/devices'), { recursive: true });
    symlinkSync(join(pci, addr), join(sys, 'bus/pci/devices', addr));
  }
  const dev = join(root, 'dev');
  mkdirSync(join(dev, 'vfio'), { recursive: true });
  return { sys, dev, uuid };
}

test('sysfs resolution: IOMMU group, cdev name, host device listing', (t) => {
  const { sys, uuid } = fakeSysfs();
  t.is(iommuGroupOf(join(sys, 'bus/mdev/devices', uuid)), '7');
  t.is(cdevOf(join(sys, 'bus/mdev/devices', uuid)), 'vfio3');
  t.deepEqual(listHostDevices({ sysfs: sys }), [`mdev:${uuid}`, 'pci:0000:00:04.0']);
});

test('openDevice names the failing step, errno and a hint', async (t) => {
  const { sys, dev, uuid } = fakeSysfs();
  const e1 = await t.throwsAsync(() => openDevice(`mdev:${uuid}`, { sysfs: sys, dev }), { instanceOf: VfioOpenError });
  t.is(e1!.code, 'ENOENT');
  t.is(e1!.step, 'open the VFIO container');
  t.regex(e1!.message, /CONFIG_VFIO_CONTAINER/);
  // A container that is not a VFIO container: GET_API_VERSION fails with ENOTTY.
  writeFileSync(join(dev, 'vfio/vfio'), '');
  const e2 = await t.throwsAsync(() => openDevice(`mdev:${uuid}`, { sysfs: sys, dev }), { instanceOf: VfioOpenError });
  t.is(e2!.step, 'VFIO_GET_API_VERSION');
  t.is(e2!.errno, 25);
  const e3 = await t.throwsAsync(() => openDevice('pci:0000:00:09.0', { sysfs: sys, dev }), { instanceOf: VfioOpenError });
  t.regex(e3!.message, /no such device in sysfs/);
  const e4 = await t.throwsAsync(() => openDevice(`cdev:mdev:${uuid}`, { sysfs: sys, dev }), { instanceOf: VfioOpenError });
  t.is(e4!.step, 'open /dev/iommu');
  t.regex(e4!.message, /CONFIG_IOMMUFD/);
  const sim = await openDevice('sim:size=64KiB,id=s1');
  t.is(sim.kind, 'sim');
  t.is(sim.id, 's1');
  await sim.close();
});
