// `migbridge reframe` against real QEMU 10 and real mtty inside the kernel-lane guest:
//   1. a paused QEMU 10 source with vfio-pci on mtty migrates with return-path and
//      switchover-ack (on both ends) through `migbridge proxy --tee` to a destination QEMU,
//      which ends up with the source's UART; mtty advertises PRE_COPY, so QEMU sends the
//      device's precopy data in a PART chunk closed by DEV_INIT_DATA_SENT;
//   2. the tee holds OPEN_RETURN_PATH, PING and that marker;
//   3. QEMU 10 without those capabilities refuses the raw tee from a file (its message is
//      logged and checked), and the mdev that failed load leaves in RESUMING is reset;
//   4. `migbridge reframe` drops the return-path commands and replaces the marker by
//      END_OF_STATE, reporting each change; its output is the tee with exactly those
//      changes, rebuilt here byte by byte from the tee and the reported offsets;
//   5. QEMU 10 without the capabilities loads the reframed file, and after `cont` the UART
//      reads what the source's VM wrote.
//   6. with capability `multifd` (2 channels) on both ends, QEMU 10.0 sends mtty's stop-copy
//      data and config as multifd device-state packets (x-migration-multifd-transfer=auto),
//      the main channel only END/FULL END_OF_STATE dummies; the destination gets the UART;
//   7. the main tee alone is refused by reframe (no output left) and by extract;
//   8. reframe merges the channel tees: the data packets become DATA_STATE records in the
//      END section, the config packet the FULL body (checked against the packets read from
//      the tees by QEMU's framing, and against the same device migrated without multifd);
//      QEMU 10 without multifd loads the file, and after `cont` the UART is the source's.
// Devices: mtty-1 [0] source, [1] proxy destination, [2] the file loads (raw, then reframed
// after a reset); multifd: [3] source, [4] destination, [5] the merged file's load. The lane
// runs one test file at a time and these tests are serial; every test leaves its devices
// RUNNING with no QEMU.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { laneEnv, migbridge, reportFigure } from './lane.js';
import type { MigrationInfo } from '../helpers/qemu-vm.js';
import { type Uart, programUartHmp, readUartDev, readUartHmp, settleDevice, withDevice, writeUartDev } from './qemu-guest.js';
import { scope } from './vm-scope.js';
import { MigState, stateName } from '../../src/fsm/index.js';
import { proxyListening, runningCli, waitFor, type CliResult } from '../helpers/cli-run.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mb-kernel-reframe-'));
const IDSTR = '0000:00:04.0/vfio';
const CAPS = ['return-path', 'switchover-ack'];
// QEMU's wire values (migration/savevm.c enum qemu_vm_cmd, hw/vfio/migration.c markers),
// written here independently of src/qemu/constants.ts.
const QEMU_VM_COMMAND = 0x08;
const MIG_CMD = { OPEN_RETURN_PATH: 1, PING: 2 } as const;
const INIT_DATA_SENT = Buffer.from('ffffffffef100005', 'hex');
const END_OF_STATE = Buffer.from('ffffffffef100001', 'hex');

const SOURCE_UART: Uart = { scr: 0xc3, lcr: 0x03, fifo: 'reframe' };
/** What a destination holds before its load, so that a load that does nothing cannot pass. */
const SCRIBBLE: Uart = { scr: 0xee, lcr: 0x00, fifo: 'zz' };
const timings: string[] = [];

function secs(ms: number): string {
  return `${(ms / 1000).toFixed(2)} s`;
}

async function scribble(uuid: string): Promise<void> {
  await withDevice(uuid, async (d) => {
    if ((await d.state()) !== MigState.RUNNING) await d.reset();
    await writeUartDev(d, SCRIBBLE);
  });
}

interface ProxyReport {
  ok: boolean;
  forwardBytes: number;
  deliveredBytes: number;
  returnPath: { bytes: number; messages: Record<string, number> };
  tee: { path: string; bytes: number; kept: boolean; why: string } | null;
}
interface InspectJson {
  size: number;
  records: { offset: number; kind: string; sectionId: number | null; command?: string }[];
  vfio: { idstr: string; sectionId: number; dataBytes: number; precopyBytes: number; stopCopyBytes: number; configBytes: number | null; configOffset: number | null; markers: Record<string, number>; sections: Record<string, number>; flavour: string }[];
  ram: { records: { MULTIFD_FLUSH: number } } | null;
}
interface ReframeChange { offset: number; what: string; action: string; why: string; sectionId?: number; idstr?: string }
interface ReframeJson { in: string; out: string; to: string | null; bytesIn: number; bytesOut: number; changes: ReframeChange[] }

/** Runs the CLI with --output=json; exit status 0 required. */
async function cliJson<T>(t: ExecutionContext, ...args: string[]): Promise<{ json: T; ms: number }> {
  const r = await migbridge(...args, '--output=json');
  if (r.code !== 0) throw new Error(`migbridge ${args.join(' ')} exited ${r.code}: ${r.stderr.trim().slice(0, 800)}`);
  t.log(`migbridge ${args[0]}: ${secs(r.ms)}`);
  return { json: JSON.parse(r.stdout) as T, ms: r.ms };
}

// ---- migrations through the proxy, each made once (tests 1 and 4 check them) ----

interface Capture {
  tee: string;
  source: MigrationInfo;
  proxy: CliResult;
  destStatus: string;
  destBefore: Uart;
  destAfter: Uart;
  migrateMs: number;
}
let capture: Promise<Capture> | undefined;
let teeInspect: Promise<InspectJson> | undefined;

/** `migbridge inspect` of the tee, run once (a CLI run costs seconds in the TCG guest). */
function inspectTee(t: ExecutionContext, tee: string): Promise<InspectJson> {
  teeInspect ??= cliJson<InspectJson>(t, 'inspect', tee).then((r) => r.json);
  return teeInspect;
}

interface MigrationSetup {
  label: string;
  /** mdev UUIDs of the source and of the destination. */
  src: string;
  dst: string;
  caps: string[];
  /** migrate-set-parameters on both ends. */
  params?: Record<string, unknown>;
  uart: Uart;
  /** Where the sockets and the tee (DIR/tee.mig, and its channel tees) go. */
  dir: string;
}

/** A paused source with `o.uart` programmed migrates through `migbridge proxy --tee` into a destination; then `cont` there. */
async function runMigration(t: ExecutionContext, o: MigrationSetup): Promise<Capture> {
  const sc = scope(t, [o.src, o.dst]);
  await scribble(o.dst);
  fs.mkdirSync(o.dir, { recursive: true });
  const listen = path.join(o.dir, 'in.sock');
  const out = path.join(o.dir, 'out.sock');
  const tee = path.join(o.dir, 'tee.mig');

  let t0 = performance.now();
  const src = await sc.vm({ uuid: o.src, name: `${o.label}-source`, paused: true });
  await src.setCapabilities(o.caps);
  if (o.params) await src.qmp('migrate-set-parameters', o.params);
  await programUartHmp(src, o.uart);
  const back = await readUartHmp(src);
  if (back.scr !== o.uart.scr || back.lcr !== o.uart.lcr || back.fifo !== o.uart.fifo) {
    throw src.failure(`UART programmed through HMP reads back ${JSON.stringify(back)}`);
  }
  // Reading popped the FIFO: fill it again, so the migrated state has the bytes.
  await programUartHmp(src, o.uart);
  const proxy = runningCli(['proxy', '--listen', `unix:${listen}`, '--to', `unix:${out}`, '--tee', tee, '--output=json', '--progress'], 90_000, t.teardown.bind(t));
  const dst = await sc.vm({ uuid: o.dst, name: `${o.label}-destination`, incoming: true });
  await dst.setCapabilities(o.caps);
  if (o.params) await dst.qmp('migrate-set-parameters', o.params);
  await dst.qmp('migrate-incoming', { uri: `unix:${out}` });
  await waitFor(`the destination listening on ${out}`, () => fs.existsSync(out), 10_000);
  await proxyListening(proxy, 20_000);
  timings.push(`${o.label}: source + destination QEMU up, UART programmed, proxy listening: ${secs(performance.now() - t0)}`);

  t0 = performance.now();
  await src.qmp('migrate', { uri: `unix:${listen}` });
  // Both ends are waited for by their MIGRATION events, not by polling: a destination QEMU
  // 10 loading multifd device state keeps its main loop (and so QMP) busy until the load is
  // done, which took over 30 s in the nested TCG guest under host load.
  const source: MigrationInfo = await src.waitMigrationEnd({ what: 'the source migration to finish' });
  const p = await proxy.done;
  if (source.status !== 'completed') throw src.failure(`migration ${source.status}: ${JSON.stringify(source)}; proxy exit ${p.code}: ${p.stderr.slice(-2000)}`);
  const destEnd = await dst.waitMigrationEnd({ what: 'the incoming migration to end' });
  if (destEnd.status !== 'completed') throw dst.failure(`incoming migration ${destEnd.status}: ${JSON.stringify(destEnd)}`);
  const destStatus = await dst.waitStatus((s) => s !== 'inmigrate', 20_000, 'the destination to leave inmigrate');
  const migrateMs = performance.now() - t0;

  // The destination loads the device state when its VM starts (gotcha 1).
  const destBefore = await readUartHmp(dst);
  await dst.qmp('cont');
  await dst.waitStatus((s) => s === 'running', 10_000, 'running after cont');
  const destAfter = await readUartHmp(dst);
  await sc.finish();
  timings.push(`${o.label}: migration through the proxy ${secs(migrateMs)}`);
  return { tee, source, proxy: p, destStatus, destBefore, destAfter, migrateMs };
}

/** The switchover-ack migration (tests 1 to 3): mtty-1 [0] -> [1]. */
function migrateThroughProxy(t: ExecutionContext): Promise<Capture> {
  const { mtty1 } = laneEnv();
  capture ??= runMigration(t, { label: 'switchover-ack', src: mtty1[0]!, dst: mtty1[1]!, caps: CAPS, uart: SOURCE_UART, dir: tmp });
  return capture;
}

test.serial('switchover-ack migration of vfio-pci on mtty through `migbridge proxy --tee`: the destination gets the UART; the tee holds OPEN_RETURN_PATH, PING and DEV_INIT_DATA_SENT', async (t) => {
  const t0 = performance.now();
  const c = await migrateThroughProxy(t);
  t.log(`migrate through the proxy: ${secs(c.migrateMs)}; source query-migrate vfio ${JSON.stringify((c.source as { vfio?: unknown }).vfio)}, total-time ${String(c.source['total-time'])} ms`);
  t.is(c.proxy.code, 0, `proxy: ${c.proxy.stderr.slice(-2000)}`);
  const report = JSON.parse(c.proxy.stdout) as ProxyReport;
  t.true(report.ok);
  t.true(report.tee?.kept, report.tee?.why);
  t.is(report.deliveredBytes, report.forwardBytes, 'every byte reached the destination');
  t.is(report.returnPath.messages.SWITCHOVER_ACK, 1, `the destination acked the switchover over the return path (${JSON.stringify(report.returnPath.messages)})`);
  t.is(fs.statSync(c.tee).size, report.forwardBytes, 'the tee holds every byte the source sent');
  t.is(c.destStatus, 'prelaunch', 'the paused source leaves the destination in prelaunch');
  t.deepEqual(c.destBefore, SCRIBBLE, 'before cont the destination mdev still shows its old contents');
  t.deepEqual(c.destAfter, SOURCE_UART, "after cont the destination's UART is what the source's VM wrote");

  const ins = await inspectTee(t, c.tee);
  const commands = ins.records.filter((r) => r.kind === 'COMMAND').map((r) => r.command);
  t.log(`tee: ${ins.size} bytes; commands ${commands.join(', ')}`);
  t.is(commands.filter((n) => n === 'OPEN_RETURN_PATH').length, 1, 'one OPEN_RETURN_PATH');
  t.true(commands.includes('PING'), 'at least one PING');
  const dev = ins.vfio.find((d) => d.idstr === IDSTR);
  if (!dev) return t.fail(`inspect finds no ${IDSTR} (found ${ins.vfio.map((d) => d.idstr).join(', ')})`);
  t.log(`${IDSTR}: markers ${JSON.stringify(dev.markers)}, data ${dev.dataBytes} bytes (precopy ${dev.precopyBytes}, stop-copy ${dev.stopCopyBytes}); ${dev.flavour}`);
  t.is(dev.markers.DEV_INIT_DATA_SENT, 1, 'QEMU closed its precopy chunk with DEV_INIT_DATA_SENT once');
  t.true(dev.precopyBytes > 0, 'mtty sent data during precopy (its 24-byte header)');
  t.is(dev.dataBytes, 60, 'mtty-1 state is 60 bytes in all');
  timings.push(`test 1: ${secs(performance.now() - t0)}`);
});

test.serial('QEMU 10 without return-path/switchover-ack refuses the raw tee from a file; the mdev left in RESUMING is reset', async (t) => {
  const t0 = performance.now();
  const cDev = laneEnv().mtty1[2]!;
  const c = await migrateThroughProxy(t);
  const sc = scope(t, [cDev]);
  await scribble(cDev);
  const vm = await sc.vm({ uuid: cDev, name: 'reframe-raw-tee', incoming: true });
  const err = await t.throwsAsync(vm.migrateIncomingFile(c.tee));
  t.true(vm.hasExited, 'QEMU exits on the failed load');
  const said = vm.stderr.trim();
  t.log(`QEMU 10 on the raw tee (stderr): ${said}`);
  t.regex(said, /load of migration failed/i, `QEMU reports the failed load (${err?.message.slice(0, 300)})`);
  // QEMU 10.0 goes through OPEN_RETURN_PATH and PING from the file without complaint; what
  // it refuses is the marker (hw/vfio/migration.c vfio_load_state).
  t.regex(said, /Received INIT_DATA_SENT but switchover ack is not used/, 'QEMU names the switchover-ack marker as the reason');
  t.regex(said, /error while loading state section id \d+\(0000:00:04\.0\/vfio\)/, 'in the vfio section');
  const s = await settleDevice(cDev);
  t.is(s.found, 'RESUMING', 'the failed load left the mdev in RESUMING');
  t.is(s.now, 'RUNNING', 'migbridge reset it to RUNNING');
  timings.push(`raw tee refused + reset: ${secs(performance.now() - t0)}`);
});

/** The tee with the reported changes applied, rebuilt from QEMU's framing (not migbridge's). */
function applyChanges(t: ExecutionContext, tee: Buffer, changes: ReframeChange[]): { bytes: Buffer; dropped: number } {
  const parts: Buffer[] = [];
  let at = 0;
  let dropped = 0;
  for (const ch of [...changes].sort((x, y) => x.offset - y.offset)) {
    t.true(ch.offset >= at, `change at ${ch.offset} does not overlap the one before`);
    parts.push(tee.subarray(at, ch.offset));
    if (ch.action === 'dropped') {
      // QEMU_VM_COMMAND, be16 cmd, be16 len, len bytes.
      t.is(tee[ch.offset], QEMU_VM_COMMAND, `a command record at ${ch.offset}`);
      const cmd = tee.readUInt16BE(ch.offset + 1);
      const name = ch.what.replace(/^command /, '') as keyof typeof MIG_CMD;
      t.is(cmd, MIG_CMD[name], `${ch.what} at ${ch.offset} carries QEMU's command number`);
      const len = 5 + tee.readUInt16BE(ch.offset + 3);
      dropped += len;
      at = ch.offset + len;
    } else {
      t.true(tee.subarray(ch.offset, ch.offset + 8).equals(INIT_DATA_SENT), `the 8 bytes at ${ch.offset} are DEV_INIT_DATA_SENT`);
      parts.push(END_OF_STATE);
      at = ch.offset + 8;
    }
  }
  parts.push(tee.subarray(at));
  return { bytes: Buffer.concat(parts), dropped };
}

test.serial('`migbridge reframe` drops the return-path commands and replaces DEV_INIT_DATA_SENT; QEMU 10 without the capabilities loads the result and the UART is the source\'s', async (t) => {
  const t0 = performance.now();
  const cDev = laneEnv().mtty1[2]!;
  const c = await migrateThroughProxy(t);
  const ins = await inspectTee(t, c.tee);
  const dev = ins.vfio.find((d) => d.idstr === IDSTR);
  if (!dev) return t.fail(`inspect finds no ${IDSTR} in the tee`);
  const out = path.join(tmp, 'reframed.mig');
  const { json: r } = await cliJson<ReframeJson>(t, 'reframe', c.tee, out);
  t.log(`reframe: ${r.bytesIn} -> ${r.bytesOut} bytes; changes:\n${r.changes.map((x) => `  ${x.offset}: ${x.what}${x.idstr ? ` (${x.idstr}, section ${x.sectionId})` : ''} ${x.action}: ${x.why}`).join('\n')}`);

  // The change list: every OPEN_RETURN_PATH and PING inspect sees, dropped at its offset;
  // the marker replaced, in the vfio section; nothing else.
  const cmdsAt = (name: string): number[] => ins.records.filter((x) => x.kind === 'COMMAND' && x.command === name).map((x) => x.offset);
  const changed = (what: string, action: string): number[] => r.changes.filter((x) => x.what === what && x.action === action).map((x) => x.offset);
  t.deepEqual(changed('command OPEN_RETURN_PATH', 'dropped'), cmdsAt('OPEN_RETURN_PATH'));
  t.deepEqual(changed('command PING', 'dropped'), cmdsAt('PING'));
  const markers = r.changes.filter((x) => x.what === 'vfio DEV_INIT_DATA_SENT');
  t.is(markers.length, 1, 'one marker replaced');
  t.like(markers[0], { action: 'replaced', idstr: IDSTR, sectionId: dev.sectionId });
  t.is(r.changes.length, cmdsAt('OPEN_RETURN_PATH').length + cmdsAt('PING').length + 1, 'no other change');
  // The marker sits in a PART chunk of the vfio section.
  const holder = ins.records.filter((x) => x.offset <= markers[0]!.offset).at(-1);
  t.like(holder, { kind: 'PART', sectionId: dev.sectionId }, `the marker at ${markers[0]!.offset} is inside a vfio PART record`);

  // OUT is the tee with exactly those changes.
  const tee = fs.readFileSync(c.tee);
  const got = fs.readFileSync(out);
  const want = applyChanges(t, tee, r.changes);
  t.is(r.bytesIn, tee.length);
  t.is(r.bytesOut, got.length);
  t.is(r.bytesOut, r.bytesIn - want.dropped, 'bytesOut = bytesIn - the dropped command bytes');
  t.true(got.equals(want.bytes), 'the output is the tee with exactly the reported changes');

  // QEMU 10 without return-path/switchover-ack loads it on the reset mdev.
  const sc = scope(t, [cDev]);
  await scribble(cDev);
  const vm = await sc.vm({ uuid: cDev, name: 'reframe-load', incoming: true });
  const tl = performance.now();
  const status = await vm.migrateIncomingFile(out);
  const loadMs = performance.now() - tl;
  t.is(status, 'prelaunch', `the load completes (QEMU stderr: ${vm.stderr.trim() || 'empty'})`);
  const before = await readUartHmp(vm);
  t.deepEqual(before, SCRIBBLE, 'before cont the mdev still shows its old contents');
  await vm.qmp('cont');
  await vm.waitStatus((s) => s === 'running', 10_000, 'running after cont');
  const after = await readUartHmp(vm);
  t.log(`load of the reframed file: ${secs(loadMs)}; UART after cont ${JSON.stringify(after)}`);
  t.deepEqual(after, SOURCE_UART, "the UART read after cont is what the source's VM wrote");
  await sc.finish();
  timings.push(`reframe + load: ${secs(performance.now() - t0)}`);
});

// ---- multifd: the device's stop-copy data and config travel on the multifd channels ----

/** A UART unlike the switchover-ack migration's, so a load cannot pass with the wrong state. */
const MF_UART: Uart = { scr: 0x5a, lcr: 0x1b, fifo: 'multifd' };
const MF_CAPS = ['multifd'];
const MF_PARAMS = { 'multifd-channels': 2 };
// QEMU 10.0 framing (migration/multifd.h, hw/vfio/migration-multifd.c), written here
// independently of src/qemu/multifd.ts: a device-state packet is a 276-byte header (be32
// magic, be32 version 1, be32 flags with DEVICE_STATE, char idstr[256], be32 instance_id,
// be32 next_packet_size), then the VFIO packet: be32 version 0, be32 idx, be32 flags
// (1 = config state), data.
const MULTIFD_MAGIC = 0x11223344;
const MULTIFD_FLAG_DEVICE_STATE = 0x40;
const DEVICE_STATE_HEADER = 276;
const VFIO_PACKET_HEADER = 12;
const DEV_CONFIG_STATE = Buffer.from('ffffffffef100002', 'hex');
const RAM_SAVE_FLAG_MULTIFD_FLUSH = 0x200n;

interface MultifdChannelJson {
  channel: number | null;
  bytes: number;
  deliveredBytes: number;
  packets: number;
  deviceState: { idstr: string; instanceId: number; packets: number; bytes: number; configPacket: boolean; idx: { min: number; max: number } | null }[];
  decodeStopped: unknown;
  tee: { path: string; bytes: number; kept: boolean; error: string | null } | null;
}
type MultifdProxyReport = ProxyReport & { multifd: MultifdChannelJson[]; multifdBytes: number };
interface CliError { error: { code: string; message: string; offset?: number; idstr?: string } }
interface ExtractJson {
  vfio: { devices: { idstr: string; dataFile: string; dataBytes: number; configFile: string | null; configBytes: number | null; flavour: string }[] } | null;
}

let mfCapture: Promise<Capture> | undefined;
let mfTeeInspect: Promise<InspectJson> | undefined;

/** The multifd migration (tests 4 to 6): mtty-1 [3] -> [4]. */
function migrateMultifd(t: ExecutionContext): Promise<Capture> {
  const { mtty1 } = laneEnv();
  mfCapture ??= runMigration(t, { label: 'multifd', src: mtty1[3]!, dst: mtty1[4]!, caps: MF_CAPS, params: MF_PARAMS, uart: MF_UART, dir: path.join(tmp, 'multifd') });
  return mfCapture;
}

function inspectMultifdTee(t: ExecutionContext, tee: string): Promise<InspectJson> {
  mfTeeInspect ??= cliJson<InspectJson>(t, 'inspect', tee).then((r) => r.json);
  return mfTeeInspect;
}

interface DevicePacket { file: string; at: number; idx: number; flags: number; data: Buffer }

/** The VFIO device-state packets of `idstr` in a channel capture, found by QEMU's framing above. */
function devicePacketsIn(file: string, idstr: string): DevicePacket[] {
  const b = fs.readFileSync(file);
  const name = Buffer.concat([Buffer.from(idstr, 'latin1'), Buffer.alloc(1)]);
  const found: DevicePacket[] = [];
  for (let i = b.indexOf(name); i >= 0; i = b.indexOf(name, i + 1)) {
    const at = i - 12;
    if (at < 0 || b.readUInt32BE(at) !== MULTIFD_MAGIC || b.readUInt32BE(at + 4) !== 1 || !(b.readUInt32BE(at + 8) & MULTIFD_FLAG_DEVICE_STATE)) continue;
    const v = at + DEVICE_STATE_HEADER;
    const size = b.readUInt32BE(at + DEVICE_STATE_HEADER - 4);
    if (b.readUInt32BE(v) !== 0) throw new Error(`${file}: VFIO packet at ${v} has version ${b.readUInt32BE(v)}, not 0`);
    found.push({ file, at, idx: b.readUInt32BE(v + 4), flags: b.readUInt32BE(v + 8), data: b.subarray(v + VFIO_PACKET_HEADER, v + size) });
  }
  return found;
}

function deviceTally(report: MultifdProxyReport): { packets: number; bytes: number; configChannels: (number | null)[]; idx: { min: number; max: number } } {
  const per = report.multifd.flatMap((c) => c.deviceState.filter((d) => d.idstr === IDSTR).map((d) => ({ c, d })));
  return {
    packets: per.reduce((n, x) => n + x.d.packets, 0),
    bytes: per.reduce((n, x) => n + x.d.bytes, 0),
    configChannels: per.filter((x) => x.d.configPacket).map((x) => x.c.channel),
    idx: { min: Math.min(...per.map((x) => x.d.idx?.min ?? Infinity)), max: Math.max(...per.map((x) => x.d.idx?.max ?? -Infinity)) },
  };
}

test.serial('multifd (2 channels) migration of vfio-pci on mtty through `migbridge proxy --tee`: the destination gets the UART; QEMU sent the stop-copy data and config as multifd device-state packets, the main channel only END/FULL dummies', async (t) => {
  const t0 = performance.now();
  const c = await migrateMultifd(t);
  t.is(c.proxy.code, 0, `proxy: ${c.proxy.stderr.slice(-2000)}`);
  const report = JSON.parse(c.proxy.stdout) as MultifdProxyReport;
  t.log(`migrate through the proxy: ${secs(c.migrateMs)}; source query-migrate ram ${JSON.stringify(c.source.ram)}, vfio ${JSON.stringify((c.source as { vfio?: unknown }).vfio)}`);
  t.true(report.ok);
  t.true(report.tee?.kept, report.tee?.why);
  t.is(report.deliveredBytes, report.forwardBytes, 'every main-channel byte reached the destination');
  t.is(c.destStatus, 'prelaunch', 'the paused source leaves the destination in prelaunch');
  t.deepEqual(c.destBefore, SCRIBBLE, 'before cont the destination mdev still shows its old contents');
  t.deepEqual(c.destAfter, MF_UART, "after cont the destination's UART is what the source's VM wrote");

  t.deepEqual(report.multifd.map((ch) => ch.channel).sort(), [0, 1], 'two multifd channels, ids 0 and 1');
  for (const ch of report.multifd) {
    const what = `channel ${String(ch.channel)}`;
    t.like(ch.tee, { path: `${c.tee}.multifd-${String(ch.channel)}`, bytes: ch.bytes, kept: true, error: null }, what);
    t.is(fs.statSync(`${c.tee}.multifd-${String(ch.channel)}`).size, ch.bytes, `${what}: tee size`);
    t.is(ch.deliveredBytes, ch.bytes, `${what}: delivered`);
    t.is(ch.decodeStopped, null, `${what}: decoded to the end`);
  }
  t.is(Number(c.source.ram?.['multifd-bytes']), report.multifdBytes, "QEMU's multifd-bytes = the channels' bytes the proxy forwarded");

  // The device's packets as the proxy counted them: idx 0..n-1, the last one config.
  const dev = deviceTally(report);
  t.log(`${IDSTR} on multifd: ${dev.packets} packets, ${dev.bytes} payload bytes, idx ${dev.idx.min}..${dev.idx.max}, config packet on channel ${dev.configChannels.join(', ')}; per channel ${report.multifd.map((ch) => `${String(ch.channel)}: ${JSON.stringify(ch.deviceState)}`).join('; ')}`);
  t.true(dev.packets >= 2, 'stop-copy data packets and a config packet');
  t.deepEqual(dev.idx, { min: 0, max: dev.packets - 1 }, 'idx 0..n-1 over the channels');
  t.is(dev.configChannels.length, 1, 'one config packet');
  // The same packets read by QEMU's framing from the channel tees.
  const packets = report.multifd.flatMap((ch) => devicePacketsIn(`${c.tee}.multifd-${String(ch.channel)}`, IDSTR)).sort((x, y) => x.idx - y.idx);
  t.deepEqual(packets.map((p) => p.idx), [...Array(dev.packets).keys()], 'the tees hold every packet the proxy counted');
  t.deepEqual(packets.map((p) => p.flags), [...Array(dev.packets - 1).fill(0), 1], 'data packets (flags 0), then the config packet (flags 1)');
  t.is(packets.reduce((n, p) => n + VFIO_PACKET_HEADER + p.data.length, 0), dev.bytes, 'payload bytes = the proxy\'s count');
  const cfg = packets.at(-1)!.data;
  t.true(cfg.subarray(0, 8).equals(DEV_CONFIG_STATE) && cfg.subarray(-8).equals(END_OF_STATE), 'the config packet is DEV_CONFIG_STATE .. END_OF_STATE');
  t.log(`packets (QEMU framing): ${packets.map((p) => `idx ${p.idx} flags ${p.flags} ${p.data.length} bytes at ${path.basename(p.file)}:${p.at}`).join('; ')}`);

  // The main channel: START/PART as without multifd, END and FULL only END_OF_STATE.
  const ins = await inspectMultifdTee(t, c.tee);
  const v = ins.vfio.find((d) => d.idstr === IDSTR);
  if (!v) return t.fail(`inspect finds no ${IDSTR} in the main tee`);
  t.log(`main tee: ${ins.size} bytes; ${IDSTR}: sections ${JSON.stringify(v.sections)}, markers ${JSON.stringify(v.markers)}, data ${v.dataBytes} (precopy ${v.precopyBytes}, stop-copy ${v.stopCopyBytes}), config ${String(v.configBytes)}; ${v.flavour}`);
  t.is(v.flavour, 'qemu-10.0+ multifd');
  t.is(v.configBytes, null, 'no config blob on the main channel');
  t.is(v.stopCopyBytes, 0, 'no stop-copy data on the main channel');
  t.true(ins.records.some((r) => r.kind === 'COMMAND' && r.command === 'SWITCHOVER_START'), 'SWITCHOVER_START (needed by multifd device-state transfer)');
  t.true((ins.ram?.records.MULTIFD_FLUSH ?? 0) > 0, 'RAM pages went over multifd too');
  timings.push(`test 4 (multifd migration + checks): ${secs(performance.now() - t0)}`);
});

test.serial('the multifd main tee alone: `migbridge reframe` and `migbridge extract --out` refuse it (ESTREAM_UNSUPPORTED), reframe leaves no output', async (t) => {
  const t0 = performance.now();
  const c = await migrateMultifd(t);
  const alone = path.join(tmp, 'multifd-alone');
  fs.mkdirSync(alone);
  fs.copyFileSync(c.tee, path.join(alone, 'tee.mig'));
  const r = await migbridge('reframe', path.join(alone, 'tee.mig'), path.join(alone, 'out.mig'), '--output=json');
  t.is(r.code, 1, r.stderr);
  const err = (JSON.parse(r.stderr) as CliError).error;
  t.log(`reframe without channels (${secs(r.ms)}): ${JSON.stringify(err)}`);
  t.is(err.code, 'ESTREAM_UNSUPPORTED');
  t.regex(err.message, /multifd channels/);
  t.deepEqual(fs.readdirSync(alone), ['tee.mig'], 'no output left');

  const x = await migbridge('extract', path.join(alone, 'tee.mig'), '--out', path.join(alone, 'x'), '--output=json');
  t.is(x.code, 1, x.stderr);
  const xerr = (JSON.parse(x.stderr) as CliError).error;
  t.log(`extract --out without channels (${secs(x.ms)}): ${JSON.stringify(xerr)}; left in --out: ${JSON.stringify(fs.existsSync(path.join(alone, 'x')) ? fs.readdirSync(path.join(alone, 'x')) : null)}`);
  t.like(xerr, { code: 'ESTREAM_UNSUPPORTED', idstr: IDSTR });
  t.regex(xerr.message, /multifd channels/);
  t.deepEqual(fs.existsSync(path.join(alone, 'x')) ? fs.readdirSync(path.join(alone, 'x')) : [], [], 'nothing left in --out (no device file, no manifest)');
  timings.push(`test 5 (refusals): ${secs(performance.now() - t0)}`);
});

test.serial('`migbridge reframe` merges the multifd channels: the stop-copy packets become DATA_STATE records in the END section, the config packet the FULL body; QEMU 10 without multifd loads the file and the UART is the source\'s', async (t) => {
  const t0 = performance.now();
  const cDev = laneEnv().mtty1[5]!;
  const c = await migrateMultifd(t);
  const report = JSON.parse(c.proxy.stdout) as MultifdProxyReport;
  const ins = await inspectMultifdTee(t, c.tee);
  const v = ins.vfio.find((d) => d.idstr === IDSTR);
  if (!v) return t.fail(`inspect finds no ${IDSTR} in the main tee`);
  const dev = deviceTally(report);

  const out = path.join(tmp, 'multifd-merged.mig');
  const { json: r } = await cliJson<ReframeJson & { multifd: { channelId: number; path: string; bytes: number }[] }>(t, 'reframe', c.tee, out);
  t.log(`reframe: ${r.bytesIn} -> ${r.bytesOut} bytes; channels ${JSON.stringify(r.multifd)}; changes:\n${r.changes.map((x) => `  ${x.offset}: ${x.what}${x.idstr ? ` (${x.idstr}, section ${x.sectionId})` : ''} ${x.action}: ${x.why}`).join('\n')}`);
  t.deepEqual(r.multifd.map((ch) => ch.channelId), [0, 1], 'both channel tees found beside the main tee');

  // The change list: each MULTIFD_FLUSH replaced by its RAM round, the device's data
  // inserted and its FULL dummy replaced, the vmdesc; nothing else.
  const ram = r.changes.filter((x) => x.idstr === 'ram' && x.what === 'ram MULTIFD_FLUSH' && x.action === 'replaced');
  const vfio = r.changes.filter((x) => x.idstr === IDSTR);
  const vmdesc = r.changes.filter((x) => x.what === 'vmdesc');
  t.is(ram.length, ins.ram?.records.MULTIFD_FLUSH ?? -1, 'every MULTIFD_FLUSH of the main tee');
  const pages = ram.map((x) => /(\d+) pages, (\d+) zero pages/.exec(x.why)).reduce((n, p) => ({ normal: n.normal + Number(p?.[1]), zero: n.zero + Number(p?.[2]) }), { normal: 0, zero: 0 });
  t.deepEqual(pages, { normal: Number(c.source.ram?.normal), zero: Number(c.source.ram?.duplicate) }, 'every page QEMU sent on the channels, as QEMU counted them');
  t.is(vfio.length, 2, 'two changes in the vfio section');
  t.is(vmdesc.length, 1);
  t.like(vmdesc[0], { action: 'replaced' });
  t.is(r.changes.length, ram.length + vfio.length + vmdesc.length, 'no other change');
  const data = vfio.find((x) => x.action === 'inserted');
  const dummy = vfio.find((x) => x.action === 'replaced');
  if (!data || !dummy) return t.fail('the vfio changes are one insertion and one replacement');
  const dm = /^vfio stop-copy data from multifd: (\d+) bytes in (\d+) packets?$/.exec(data.what);
  const cm = /config blob from multifd \((\d+) bytes\)/.exec(dummy.why);
  if (!dm || !cm) return t.fail(`change texts: ${data.what} / ${dummy.why}`);
  const [dataBytes, dataPackets, configBlob] = [Number(dm[1]), Number(dm[2]), Number(cm[1])];
  t.is(data.sectionId, v.sectionId);
  t.like(dummy, { what: 'vfio END_OF_STATE (multifd dummy)', sectionId: v.sectionId });
  t.is(dataPackets, dev.packets - 1, 'every data packet the proxy counted (all but the config packet)');
  t.is(dataBytes + configBlob, dev.bytes - VFIO_PACKET_HEADER * dev.packets, 'inserted data + config blob = the device\'s payload bytes the proxy counted, less the VFIO packet headers');
  // Each RAM change sits on a flush (be64 0x200, QEMU's RAM_SAVE_FLAG_MULTIFD_FLUSH with
  // address 0) in the RAM section; the vfio ones on the END_OF_STATE of the device's END
  // and FULL chunks.
  const tee = fs.readFileSync(c.tee);
  for (const ch of ram) {
    t.is(tee.readBigUInt64BE(ch.offset), RAM_SAVE_FLAG_MULTIFD_FLUSH, `MULTIFD_FLUSH at ${ch.offset}`);
    t.is(ins.records.filter((x) => x.offset <= ch.offset).at(-1)?.sectionId, ch.sectionId, `the flush at ${ch.offset} is inside the RAM section`);
  }
  for (const [ch, kind] of [[data, 'END'], [dummy, 'FULL']] as const) {
    t.true(tee.subarray(ch.offset, ch.offset + 8).equals(END_OF_STATE), `END_OF_STATE at ${ch.offset}`);
    const holder = ins.records.filter((x) => x.offset <= ch.offset).at(-1);
    t.like(holder, { kind, sectionId: v.sectionId }, `the change at ${ch.offset} is inside the vfio ${kind} record`);
  }

  // The merged file: the device's state is whole, and framed as without multifd.
  const { json: o } = await cliJson<InspectJson>(t, 'inspect', out);
  const m = o.vfio.find((d) => d.idstr === IDSTR);
  if (!m) return t.fail(`inspect finds no ${IDSTR} in the merged file`);
  t.log(`merged: ${IDSTR}: sections ${JSON.stringify(m.sections)}, markers ${JSON.stringify(m.markers)}, data ${m.dataBytes} (precopy ${m.precopyBytes}, stop-copy ${m.stopCopyBytes}), config ${String(m.configBytes)}; ${m.flavour}`);
  t.false(m.flavour.includes('multifd'), `flavour ${m.flavour}`);
  t.is(m.flavour, 'qemu-10.0+ v2 precopy');
  t.is(m.precopyBytes, v.precopyBytes, 'precopy data as on the main channel');
  t.is(m.stopCopyBytes, dataBytes, 'stop-copy data = the inserted bytes');
  t.is(m.configBytes, configBlob - 16, 'config = the blob less DEV_CONFIG_STATE and END_OF_STATE');
  t.is(m.dataBytes, 60, 'mtty-1 state is 60 bytes in all');
  // The same device migrated without multifd (test 1's tee) frames the same amounts.
  const plain = (await inspectTee(t, (await migrateThroughProxy(t)).tee)).vfio.find((d) => d.idstr === IDSTR);
  t.log(`without multifd: data ${String(plain?.dataBytes)} (precopy ${String(plain?.precopyBytes)}, stop-copy ${String(plain?.stopCopyBytes)}), config ${String(plain?.configBytes)}`);
  t.like(plain, { precopyBytes: m.precopyBytes, stopCopyBytes: m.stopCopyBytes, configBytes: m.configBytes }, 'as without multifd');

  // extract gives the device's data (precopy from the main channel + the stop-copy packets) and config.
  const xdir = path.join(tmp, 'multifd-extract');
  const { json: x } = await cliJson<ExtractJson>(t, 'extract', out, '--out', xdir);
  const xd = x.vfio?.devices.find((d) => d.idstr === IDSTR);
  if (!xd?.configFile) return t.fail(`extract: ${JSON.stringify(x.vfio)}`);
  const packets = r.multifd.flatMap((ch) => devicePacketsIn(ch.path, IDSTR)).sort((p, q) => p.idx - q.idx);
  const stopCopy = Buffer.concat(packets.slice(0, -1).map((p) => p.data));
  const xdata = fs.readFileSync(xd.dataFile);
  t.is(xdata.length, m.dataBytes);
  t.true(xdata.subarray(v.precopyBytes).equals(stopCopy), 'extracted data after the precopy bytes = the stop-copy packets in idx order');
  t.true(fs.readFileSync(xd.configFile).equals(packets.at(-1)!.data.subarray(8, -8)), 'extracted config = the config packet\'s vmstate');
  t.like(xd, { dataBytes: m.dataBytes, configBytes: m.configBytes });

  // QEMU 10 without multifd loads the merged file on a device of its own.
  const sc = scope(t, [cDev]);
  await scribble(cDev);
  const vm = await sc.vm({ uuid: cDev, name: 'reframe-multifd-load', incoming: true });
  const tl = performance.now();
  const status = await vm.migrateIncomingFile(out);
  const loadMs = performance.now() - tl;
  t.is(status, 'prelaunch', `the load completes (QEMU stderr: ${vm.stderr.trim() || 'empty'})`);
  t.deepEqual(await readUartHmp(vm), SCRIBBLE, 'before cont the mdev still shows its old contents');
  await vm.qmp('cont');
  await vm.waitStatus((s) => s === 'running', 10_000, 'running after cont');
  const after = await readUartHmp(vm);
  t.log(`load of the merged file: ${secs(loadMs)}; UART after cont ${JSON.stringify(after)}`);
  t.deepEqual(after, MF_UART, "the UART read after cont is what the source's VM wrote");
  await sc.finish();
  timings.push(`test 6 (merge + inspect + extract + load): ${secs(performance.now() - t0)}`);
});

test.serial('`migbridge restore` from the multifd tee (channel tees beside it) puts the UART state onto another mdev; from the main tee alone it refuses and leaves the mdev RUNNING', async (t) => {
  const t0 = performance.now();
  const dDev = laneEnv().mtty1[2]!;
  const c = await migrateMultifd(t);

  // The main tee alone: its device state went over the channels; refused, mdev reset.
  const alone = path.join(tmp, 'restore-alone');
  fs.mkdirSync(alone, { recursive: true });
  fs.copyFileSync(c.tee, path.join(alone, 'tee.mig'));
  await scribble(dDev);
  const refused = await migbridge('restore', '-i', path.join(alone, 'tee.mig'), '--device', `mdev:${dDev}`, '--output=json');
  t.is(refused.code, 1, refused.stderr);
  const err = (JSON.parse(refused.stderr) as CliError).error;
  t.is(err.code, 'ESTREAM_UNSUPPORTED');
  // A file is checked whole before any device changes state: the mdev was never touched.
  t.regex(err.message, /went over multifd channels.*refused before any device was touched/);
  t.deepEqual(await withDevice(dDev, async (d) => ({ state: stateName(await d.state()), uart: await readUartDev(d) })), { state: 'RUNNING', uart: SCRIBBLE }, 'untouched: still RUNNING, nothing loaded');

  // With the channel tees found beside it: the precopy bytes from the main channel, the
  // stop-copy bytes from the multifd device-state packets, in order.
  const r = await migbridge('restore', '-i', c.tee, '--device', `mdev:${dDev}`, '--output=json');
  t.is(r.code, 0, r.stderr);
  const report = JSON.parse(r.stdout) as { devices: { idstr: string; bytes: number; ok: boolean }[] };
  t.like(report.devices[0], { idstr: IDSTR, bytes: 60, ok: true }, 'mtty-1 state is 60 bytes: 24 precopy + 36 over multifd');
  const got = await withDevice(dDev, async (d) => ({ state: stateName(await d.state()), uart: await readUartDev(d) }));
  t.deepEqual(got, { state: 'RUNNING', uart: MF_UART }, "the UART read through regionRead is what the source's VM wrote");
  timings.push(`test 7 (restore from the multifd tee): ${secs(performance.now() - t0)}`);
});

test.after.always('report timings', () => {
  if (timings.length) reportFigure('reframe', `reframe of switchover-ack and multifd captures in the guest: ${timings.join('; ')}`);
  fs.rmSync(tmp, { recursive: true, force: true });
});
