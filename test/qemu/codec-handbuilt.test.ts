// HAND-BUILT streams, for what real QEMU cannot produce on this machine: VFIO
// framings of QEMU 7.2 (protocol v1), 8.0, 8.1-9.x (INIT_DATA_SENT) and 10.x
// multifd (dummy END_OF_STATE, CONFIG_LOAD_READY); RAM records that need
// capabilities or transports not used here (XBZRLE, postcopy page sizes, HOOK,
// MULTIFD_FLUSH). Each is built from docs/stream-format.md §6 and §9 with the
// StreamWriter, decoded, re-encoded byte for byte, and summarised.
import test from 'ava';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { deflateSync } from 'node:zlib';
import { StreamWriter, vfioVmDescEntry, buildVmDesc, type WriterSink } from '../../src/qemu/writer.js';
import { RamFlag, VmCommand } from '../../src/qemu/constants.js';
import { StreamError } from '../../src/qemu/errors.js';
import { Inspector } from '../../src/qemu/summary.js';
import { extractStreamFile, xbzrleDecode } from '../../src/qemu/extract.js';
import { decodeVmstate } from '../../src/qemu/vmstate.js';
import type { SectionRef, StreamEvent } from '../../src/qemu/records.js';
import type { VmDesc } from '../../src/qemu/vmdesc.js';
import { decodeBuffer, encodeAll, scratch } from './codec-helpers.js';

class Collect implements WriterSink {
  parts: Buffer[] = [];
  write(b: Buffer): void {
    this.parts.push(Buffer.from(b));
  }
  get bytes(): Buffer {
    return Buffer.concat(this.parts);
  }
}

async function build(fn: (w: StreamWriter) => Promise<void>): Promise<Buffer> {
  const sink = new Collect();
  const w = new StreamWriter(sink, { bufferBytes: 100 });
  await fn(w);
  await w.flush();
  return sink.bytes;
}

function pattern(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

/** VFIOPCIDevice config vmstate: int32 version, config space, irq state, [MSI-X table + PBA]. */
function configBlob(space: 256 | 4096, msixVectors = 0): Buffer {
  const cfg = pattern(space, 5);
  cfg.writeUInt16LE(0x10, 0x06); // PCI_STATUS: capability list
  cfg[0x34] = 0x40;
  if (msixVectors) {
    cfg[0x40] = 0x11; // MSI-X
    cfg[0x41] = 0x00;
    cfg.writeUInt16LE(msixVectors - 1, 0x42);
  } else {
    cfg[0x40] = 0x05; // MSI, end of list
    cfg[0x41] = 0x00;
  }
  const msix = msixVectors ? pattern(msixVectors * 16 + Math.ceil(msixVectors / 8), 9) : Buffer.alloc(0);
  return Buffer.concat([Buffer.from([0, 0, 0, 1]), cfg, Buffer.alloc(16, 0), msix]);
}

function summarize(bytes: Buffer, vmdesc?: VmDesc): { evs: StreamEvent[]; report: ReturnType<Inspector['finish']> } {
  const evs = decodeBuffer(bytes, vmdesc ? { vmdesc } : {}, 13);
  const insp = new Inspector();
  for (const e of evs) insp.add(e);
  return { evs, report: insp.finish(bytes.length) };
}

function deviceData(evs: StreamEvent[], idstr: string): Buffer {
  return Buffer.concat(evs.filter((e): e is Extract<StreamEvent, { type: 'vfio-data-chunk' }> => e.type === 'vfio-data-chunk' && e.section.idstr === idstr).map((e) => e.data));
}

const DEV = '0000:00:04.0/vfio';

test('HAND-BUILT QEMU 7.2 v1 (migration region): PART always DATA_STATE + END_OF_STATE, size-0 records, 256-byte config', async (t) => {
  const d1 = pattern(4000, 1);
  const d2 = pattern(1000, 2);
  const d3 = pattern(123, 3);
  const cfg = configBlob(256);
  const bytes = await build(async (w) => {
    await w.header();
    await w.configuration('pc-i440fx-7.2');
    await w.vfioStartSection(3, DEV);
    await w.sectionPart(3);
    await w.vfioData(d1);
    await w.vfioMarker('END_OF_STATE');
    await w.endSection();
    await w.sectionPart(3);
    await w.vfioData(Buffer.alloc(0)); // nothing pending: DATA_STATE, be64 0, END_OF_STATE (§9.3)
    await w.vfioMarker('END_OF_STATE');
    await w.endSection();
    await w.sectionEnd(3);
    await w.vfioData(d2);
    await w.vfioData(d3);
    await w.vfioMarker('END_OF_STATE');
    await w.endSection();
    await w.vfioConfigSection(3, DEV, cfg);
    await w.eof();
  });
  const { evs, report } = summarize(bytes); // no vmdesc: the config is framed by its layout
  t.true(encodeAll(evs).equals(bytes));
  t.true(deviceData(evs, DEV).equals(Buffer.concat([d1, d2, d3])));
  const d = report.vfio[0]!;
  t.is(d.flavour, 'qemu-7.2 v1');
  t.deepEqual(d.dataChunks.map((c) => [c.section, c.size]), [['PART', 4000], ['PART', 0], ['END', 1000], ['END', 123]]);
  t.is(d.configBytes, 4 + 256 + 16);
  // 7.2 wrote no SWITCHOVER_START: the PART bytes may be precopy or stop-copy; END is stop-copy.
  t.is(d.precopyBytes, 0);
  t.is(d.phaseUnknownBytes, 4000);
  t.is(d.stopCopyBytes, 1123);
  t.deepEqual(d.dataChunks.map((c) => c.phase), ['unknown', 'unknown', 'stop-copy', 'stop-copy']);
  t.is(report.switchoverStart, null);
});

test('HAND-BUILT QEMU 8.0 v2: no PART, stop-copy DATA_STATE chunks of at most 1 MiB, config with MSI-X', async (t) => {
  const data = pattern(2.5 * (1 << 20), 7);
  const cfg = configBlob(256, 4);
  const bytes = await build(async (w) => {
    await w.header();
    await w.configuration('pc-q35-8.0');
    await w.vfioStartSection(40, DEV);
    await w.sectionEnd(40);
    for (let off = 0; off < data.length; off += 1 << 20) {
      const piece = data.subarray(off, off + (1 << 20));
      // Streamed the way the save engine writes: header, then the payload in pieces.
      await w.vfioDataHeader(piece.length);
      for (let p = 0; p < piece.length; p += 100_000) await w.payload(piece.subarray(p, p + 100_000));
    }
    await w.vfioMarker('END_OF_STATE');
    await w.endSection();
    await w.vfioConfigSection(40, DEV, cfg);
    await w.eof();
  });
  const { evs, report } = summarize(bytes);
  t.true(encodeAll(evs).equals(bytes));
  t.true(deviceData(evs, DEV).equals(data));
  const d = report.vfio[0]!;
  t.is(d.flavour, 'qemu-8.0+ v2');
  t.deepEqual(d.dataChunks.map((c) => c.size), [1 << 20, 1 << 20, 0.5 * (1 << 20)]);
  t.is(d.configBytes, 4 + 256 + 16 + 4 * 16 + 1);
  // With the vmdesc entry QEMU writes for the FULL part, framing uses its size instead.
  const vmdesc = buildVmDesc([vfioVmDescEntry(DEV, 0, cfg.length)]);
  t.true(encodeAll(decodeBuffer(bytes, { vmdesc })).equals(bytes));
});

test('HAND-BUILT QEMU 8.1-9.x precopy with switchover-ack: PART ends with INIT_DATA_SENT, empty PARTs', async (t) => {
  const init = pattern(300, 1);
  const dirty = pattern(50, 2);
  const stop = pattern(700, 3);
  const bytes = await build(async (w) => {
    await w.header();
    await w.configuration('pc-q35-9.1');
    await w.vfioStartSection(41, DEV);
    await w.sectionPart(41);
    await w.vfioData(init);
    await w.vfioMarker('DEV_INIT_DATA_SENT');
    await w.endSection();
    await w.sectionPart(41);
    await w.vfioMarker('END_OF_STATE'); // an 8-byte PART: nothing readable now
    await w.endSection();
    await w.sectionPart(41);
    await w.vfioData(dirty);
    await w.vfioMarker('END_OF_STATE');
    await w.endSection();
    await w.sectionEnd(41);
    await w.vfioData(stop);
    await w.vfioMarker('END_OF_STATE');
    await w.endSection();
    await w.vfioConfigSection(41, DEV, configBlob(4096));
    await w.eof();
  });
  const { evs, report } = summarize(bytes);
  t.true(encodeAll(evs).equals(bytes));
  t.true(deviceData(evs, DEV).equals(Buffer.concat([init, dirty, stop])));
  const d = report.vfio[0]!;
  t.is(d.flavour, 'qemu-8.1+ v2 precopy');
  t.is(d.markers.DEV_INIT_DATA_SENT, 1);
  t.is(d.configBytes, 4116);
});

test('HAND-BUILT QEMU 10.0 multifd transfer: END and FULL are a bare END_OF_STATE after SWITCHOVER_START', async (t) => {
  const bytes = await build(async (w) => {
    await w.header();
    await w.configuration('pc-q35-10.0');
    await w.vfioStartSection(42, DEV);
    await w.switchoverStart();
    await w.sectionEnd(42);
    await w.vfioMarker('END_OF_STATE');
    await w.endSection();
    await w.sectionFull(42, DEV, 0, 1);
    await w.vfioMarker('END_OF_STATE');
    await w.endSection();
    await w.eof();
  });
  t.true(bytes.includes(Buffer.from('08000b0000', 'hex')));
  const { evs, report } = summarize(bytes);
  t.true(encodeAll(evs).equals(bytes));
  t.is(report.vfio[0]!.flavour, 'qemu-10.0+ multifd');
  // One event marks the placeholder: the FULL's marker, not the END's bare END_OF_STATE.
  const fullAt = report.records.find((r) => r.kind === 'FULL')!.offset;
  t.deepEqual(
    evs.filter((e) => e.type === 'vfio-multifd-placeholder').map((e) => ({ marker: (e as { marker: string }).marker, inFull: e.offset > fullAt })),
    [{ marker: 'END_OF_STATE', inFull: true }],
  );
  t.is(evs.filter((e) => e.type === 'vfio-marker' && e.marker === 'END_OF_STATE').length, 2, 'START and END keep plain END_OF_STATE markers');
  t.is(report.vfio[0]!.dataBytes, 0);
  t.is(report.vfio[0]!.configBytes, null);
});

test('HAND-BUILT QEMU 10.1 multifd with load-config-after-iter: FULL is CONFIG_LOAD_READY only', async (t) => {
  const bytes = await build(async (w) => {
    await w.header();
    await w.configuration('virt-10.1');
    await w.vfioStartSection(5, DEV);
    await w.switchoverStart();
    await w.sectionEnd(5);
    await w.vfioMarker('END_OF_STATE');
    await w.endSection();
    await w.sectionFull(5, DEV, 0, 1);
    await w.vfioMarker('DEV_CONFIG_LOAD_READY');
    await w.endSection();
    await w.eof();
  });
  const { evs, report } = summarize(bytes);
  t.true(encodeAll(evs).equals(bytes));
  t.is(report.vfio[0]!.flavour, 'qemu-10.1+ multifd');
  t.deepEqual(evs.filter((e) => e.type === 'vfio-multifd-placeholder').map((e) => (e as { marker: string }).marker), ['DEV_CONFIG_LOAD_READY']);
  t.is(bytes.readBigUInt64BE(bytes.length - 1 - 5 - 8), 0xffffffffef100006n);
});

test('HAND-BUILT a save-engine stream for 3 devices (QEMU 10.0 framing, no multifd) decodes to each device\'s data', async (t) => {
  const ids = ['0000:00:04.0/vfio', '0000:00:05.0/vfio', 'dev2/vfio'];
  const datas = ids.map((_, i) => pattern(10_000 * (i + 1), i));
  const cfg = configBlob(4096);
  const bytes = await build(async (w) => {
    await w.header();
    await w.configuration('pc-i440fx-10.0');
    for (let i = 0; i < 3; i++) await w.vfioStartSection(100 + i, ids[i]!);
    for (let i = 0; i < 3; i++) {
      await w.sectionPart(100 + i);
      await w.vfioData(datas[i]!.subarray(0, 1000));
      await w.vfioMarker('END_OF_STATE');
      await w.endSection();
    }
    await w.switchoverStart();
    for (let i = 0; i < 3; i++) {
      await w.sectionEnd(100 + i);
      await w.vfioData(datas[i]!.subarray(1000));
      await w.vfioMarker('END_OF_STATE');
      await w.endSection();
    }
    for (let i = 0; i < 3; i++) await w.vfioConfigSection(100 + i, ids[i]!, cfg);
    await w.eof();
    await w.vmdesc(buildVmDesc(ids.map((id) => vfioVmDescEntry(id, 0, cfg.length))));
  });
  const { evs, report } = summarize(bytes);
  t.true(encodeAll(evs).equals(bytes));
  ids.forEach((id, i) => t.true(deviceData(evs, id).equals(datas[i]!), id));
  t.deepEqual(report.vfio.map((d) => d.flavour), Array(3).fill('qemu-10.0+ v2 precopy'));
  // SWITCHOVER_START places the PARTs before it: precopy; the ENDs after it: stop-copy.
  t.deepEqual(report.vfio.map((d) => [d.precopyBytes, d.stopCopyBytes, d.phaseUnknownBytes]), datas.map((x) => [1000, x.length - 1000, 0]));
  t.is(report.switchoverStart, report.records.find((r) => r.kind === 'COMMAND')!.offset);
  t.deepEqual(report.records.slice(-2).map((r) => r.kind), ['EOF', 'VMDESCRIPTION']);
});

test('StreamWriter refuses out-of-order use with typed errors', async (t) => {
  const w = new StreamWriter(new Collect());
  await w.header();
  await t.throwsAsync(() => w.vfioMarker('END_OF_STATE'), { instanceOf: StreamError, code: 'ESTREAM_WRITER' });
  await w.sectionStart(1, DEV, 0, 1);
  await t.throwsAsync(() => w.sectionPart(2), { instanceOf: StreamError, message: /section 1 is open/ });
  await w.vfioDataHeader(10);
  await t.throwsAsync(() => w.vfioMarker('END_OF_STATE'), { message: /10 DATA_STATE payload bytes still owed/ });
  await t.throwsAsync(() => w.payload(Buffer.alloc(11)), { message: /exceeds the 10 declared/ });
  await w.payload(Buffer.alloc(10));
  await w.vfioMarker('END_OF_STATE');
  await w.endSection();
  await t.throwsAsync(() => w.endSection(), { code: 'ESTREAM_WRITER' });
});

// ---- RAM ----

interface RamBuild {
  w: StreamWriter;
  sec: SectionRef;
}
async function ramRecord(b: RamBuild, ev: Record<string, unknown>): Promise<void> {
  await b.w.event({ offset: 0, section: b.sec, ...ev } as unknown as StreamEvent);
}
const RAM_SEC: SectionRef = { sectionId: 2, idstr: 'ram', instanceId: 0, versionId: 4, handler: 'ram' };

test('HAND-BUILT RAM: x-ignore-shared GPA, PAGE, ZERO+CONTINUE, XBZRLE, COMPRESS_PAGE, MULTIFD_FLUSH; extract applies them (and refuses a stream whose pages went over multifd)', async (t) => {
  const P = 4096;
  const page0 = pattern(P, 1);
  const page1 = pattern(P, 2);
  const updated = Buffer.from(page0);
  updated.write('XBZRLE was here', 100, 'latin1');
  // XBZRLE delta (zrun, nzrun, bytes): 100 unchanged, 15 new bytes.
  const delta = Buffer.concat([Buffer.from([100, 15]), Buffer.from('XBZRLE was here', 'latin1')]);
  const check = Buffer.from(page0);
  xbzrleDecode(delta, check);
  t.true(check.equals(updated));
  const compressed = deflateSync(page1);
  const stream = (multifd: boolean): Promise<Buffer> => build(async (w) => {
    const b = { w, sec: RAM_SEC };
    await w.header();
    await w.configuration('pc-i440fx-7.2', { capabilities: ['x-ignore-shared'] });
    await w.sectionStart(2, 'ram', 0, 4);
    await ramRecord(b, { type: 'ram-mem-size', flags: RamFlag.MEM_SIZE, address: 5 * P, blocks: [{ name: 'pc.ram', usedLength: 4 * P, gpa: 0n }, { name: '/rom@etc/x', usedLength: P, gpa: 0xfffc0000n }] });
    await ramRecord(b, { type: 'ram-eos', flags: RamFlag.EOS, address: 0 });
    await w.endSection();
    await w.sectionPart(2);
    await ramRecord(b, { type: 'ram-page', flags: RamFlag.PAGE, address: 0, block: 'pc.ram', continued: false, data: page0 });
    await ramRecord(b, { type: 'ram-page', flags: RamFlag.PAGE | RamFlag.CONTINUE, address: 2 * P, block: 'pc.ram', continued: true, data: page1 });
    await ramRecord(b, { type: 'ram-zero', flags: RamFlag.ZERO | RamFlag.CONTINUE, address: 3 * P, block: 'pc.ram', continued: true, fill: 0 });
    await ramRecord(b, { type: 'ram-zero', flags: RamFlag.ZERO, address: 0, block: '/rom@etc/x', continued: false, fill: 0 });
    if (multifd) await ramRecord(b, { type: 'ram-multifd-flush', flags: RamFlag.MULTIFD_FLUSH, address: 0 });
    await ramRecord(b, { type: 'ram-eos', flags: RamFlag.EOS, address: 0 });
    await w.endSection();
    await w.sectionEnd(2);
    await ramRecord(b, { type: 'ram-xbzrle', flags: RamFlag.XBZRLE, address: 0, block: 'pc.ram', continued: false, data: delta });
    await ramRecord(b, { type: 'ram-compressed', flags: RamFlag.COMPRESS_PAGE | RamFlag.CONTINUE, address: P, block: 'pc.ram', continued: true, data: compressed });
    await ramRecord(b, { type: 'ram-zero', flags: RamFlag.ZERO | RamFlag.CONTINUE, address: 2 * P, block: 'pc.ram', continued: true, fill: 0 });
    await ramRecord(b, { type: 'ram-eos', flags: RamFlag.EOS, address: 0 });
    await w.endSection();
    await w.eof();
  });
  const bytes = await stream(true);
  // The GPA follows each block's used length (§6.2): 0xfffc0000 right after "/rom@etc/x" + be64 4096.
  t.true(bytes.includes(Buffer.concat([Buffer.from('\x0a/rom@etc/x', 'latin1'), Buffer.from('0000000000001000' + '00000000fffc0000', 'hex')])));
  const { evs, report } = summarize(bytes);
  t.true(encodeAll(evs).equals(bytes));
  t.deepEqual(report.ram!.pages, { PAGE: 2, ZERO: 3, XBZRLE: 1, COMPRESS_PAGE: 1 });
  t.deepEqual(report.ram!.records, { MEM_SIZE: 1, EOS: 3, MULTIFD_FLUSH: 1 });
  t.deepEqual(report.ram!.blocks.map((x) => [x.name, x.gpa]), [['pc.ram', 0n], ['/rom@etc/x', 0xfffc0000n]]);
  t.true(report.ram!.ignoreShared);

  const dir = await scratch(t);
  const file = join(dir, 'ram.mig');
  // A MULTIFD_FLUSH says pages went over multifd channels: RAM images from this stream alone
  // would miss them, so extract refuses.
  await writeFile(file, bytes);
  await t.throwsAsync(extractStreamFile(file, { ramDir: join(dir, 'ram') }), { code: 'ESTREAM_UNSUPPORTED', message: /multifd channels.*at offset \d+ .*"ram"/ });
  await writeFile(file, await stream(false));
  const res = await extractStreamFile(file, { ramDir: join(dir, 'ram') });
  t.deepEqual(res.ram.map((r) => r.file.split('/').pop()), ['pc.ram', '%2From@etc%2Fx']);
  const img = await readFile(join(dir, 'ram', 'pc.ram'));
  t.true(img.subarray(0, P).equals(updated), 'XBZRLE applied over the earlier page');
  t.true(img.subarray(P, 2 * P).equals(page1), 'COMPRESS_PAGE inflated');
  t.true(img.subarray(2 * P, 3 * P).equals(Buffer.alloc(P)), 'a ZERO page after a PAGE zeroes it');
  t.true(img.subarray(3 * P).equals(Buffer.alloc(P)));
});

test('HAND-BUILT RAM with postcopy: the page-size field appears only for blocks with a different page size', async (t) => {
  const P = 4096;
  const H = 2 << 20;
  const summary = Buffer.alloc(16);
  summary.writeBigUInt64BE(BigInt(P | H), 0);
  summary.writeBigUInt64BE(BigInt(P), 8);
  const bytes = await build(async (w) => {
    const b = { w, sec: RAM_SEC };
    await w.header();
    await w.configuration('pc-q35-10.0');
    await w.command(VmCommand.POSTCOPY_ADVISE, summary);
    await w.sectionStart(2, 'ram', 0, 4);
    await ramRecord(b, { type: 'ram-mem-size', flags: RamFlag.MEM_SIZE, address: H + 2 * P, blocks: [{ name: 'mem0', usedLength: H, pageSize: H }, { name: 'pc.bios', usedLength: 2 * P }] });
    await ramRecord(b, { type: 'ram-eos', flags: RamFlag.EOS, address: 0 });
    await w.endSection();
    await w.eof();
  });
  const { evs } = summarize(bytes);
  t.true(encodeAll(evs).equals(bytes));
  const ms = evs.find((e) => e.type === 'ram-mem-size') as Extract<StreamEvent, { type: 'ram-mem-size' }>;
  t.deepEqual(ms.blocks, [{ name: 'mem0', usedLength: H, pageSize: H }, { name: 'pc.bios', usedLength: 2 * P }]);
});

test('HAND-BUILT configuration subsections: target-page-bits, capabilities, uuid', async (t) => {
  const uuid = pattern(16, 4);
  const bytes = await build(async (w) => {
    await w.header();
    await w.configuration('virt-9.2', { targetPageBits: 12, capabilities: ['x-ignore-shared', 'validate-uuid'], uuid });
    await w.eof();
  });
  const { evs, report } = summarize(bytes);
  t.true(encodeAll(evs).equals(bytes));
  t.deepEqual(report.configuration, {
    machineType: 'virt-9.2',
    capabilities: ['x-ignore-shared', 'validate-uuid'],
    subsections: [
      { name: 'configuration/target-page-bits', version: 1, bytes: 4 },
      { name: 'configuration/capabilities', version: 1, bytes: 4 + 16 + 14 },
      { name: 'configuration/uuid', version: 1, bytes: 16 },
    ],
  });
});

test('RAM_SAVE_FLAG_HOOK is a typed unsupported error; unknown flag bits are a format error', async (t) => {
  for (const [flags, code] of [[RamFlag.HOOK, 'ESTREAM_UNSUPPORTED'], [0x400, 'ESTREAM_FORMAT'], [RamFlag.PAGE | RamFlag.ZERO, 'ESTREAM_FORMAT']] as const) {
    const bytes = await build(async (w) => {
      await w.header();
      await w.sectionStart(2, 'ram', 0, 4);
      await ramRecord({ w, sec: RAM_SEC }, { type: 'ram-eos', flags, address: 0 });
    });
    const err = t.throws(() => decodeBuffer(bytes), { instanceOf: StreamError });
    t.is(err!.code, code);
    t.is(err!.offset, 8 + 1 + 4 + 1 + 3 + 8, 'offset of the address word');
    t.is(err!.idstr, 'ram');
  }
});

test('HAND-BUILT FULL vmstate sections are framed by the vmdesc (fields, arrays, structs, subsections) and dumped', async (t) => {
  const vmdesc: VmDesc = {
    page_size: 4096,
    devices: [
      {
        name: 'dev0', instance_id: 0, vmsd_name: 'dev', version: 3,
        fields: [
          { name: 'a', type: 'uint32', size: 4 },
          { name: 'neg', type: 'int16', size: 2 },
          { name: 'on', type: 'bool', size: 1 },
          { name: 'regs', type: 'uint16', size: 2, array_len: 3 },
          { name: 's', type: 'struct', size: 1 + (1 + 1 + 9 + 4) + 1, struct: { vmsd_name: 'inner', version: 1, fields: [{ name: 'x', type: 'uint8', size: 1 }], subsections: [{ vmsd_name: 'inner/sub', version: 2, fields: [{ name: 'y', type: 'uint8', size: 1 }] }] } },
          { name: 'blob', type: 'buffer', size: 3 },
        ],
        subsections: [{ vmsd_name: 'dev/extra', version: 1, fields: [{ name: 'z', type: 'uint64', size: 8 }] }],
      },
      { name: 'slirp', instance_id: 0, size: 5, fields: [{ name: 'data', type: 'buffer', size: 5 }] },
    ],
  };
  const sub = (name: string, version: number): Buffer => Buffer.concat([Buffer.from([5, name.length]), Buffer.from(name, 'latin1'), Buffer.from([0, 0, 0, version])]);
  const body = Buffer.concat([
    Buffer.from('0000002a', 'hex'), Buffer.from('fffe', 'hex'), Buffer.from([1]), Buffer.from('000100020003', 'hex'),
    Buffer.from([7]), sub('inner/sub', 2), Buffer.from([8]),
    Buffer.from('abcdef', 'hex'),
    sub('dev/extra', 1), Buffer.from('0000000000000009', 'hex'),
  ]);
  const bytes = await build(async (w) => {
    await w.header();
    await w.sectionFull(10, 'dev0', 0, 3);
    await w.event({ type: 'vmstate', offset: 0, section: { sectionId: 10, idstr: 'dev0', instanceId: 0, versionId: 3, handler: 'vmstate' }, data: body, desc: vmdesc.devices[0]! });
    await w.endSection();
    await w.sectionFull(11, 'slirp', 0, 4);
    await w.event({ type: 'vmstate', offset: 0, section: { sectionId: 11, idstr: 'slirp', instanceId: 0, versionId: 4, handler: 'vmstate' }, data: Buffer.from('hello'), desc: vmdesc.devices[1]! });
    await w.endSection();
    await w.eof();
    await w.vmdesc(vmdesc);
  });
  const evs = decodeBuffer(bytes, { vmdesc }, 3);
  t.true(encodeAll(evs).equals(bytes));
  const vs = evs.filter((e): e is Extract<StreamEvent, { type: 'vmstate' }> => e.type === 'vmstate');
  t.true(vs[0]!.data.equals(body));
  t.deepEqual(decodeVmstate(vs[0]!.desc, vs[0]!.data), {
    a: '0x0000002a',
    neg: '0xfffe (-2)',
    on: true,
    regs: ['0x0001', '0x0002', '0x0003'],
    s: { x: '0x07', 'inner/sub': { y: '0x08' } },
    blob: 'ab cd ef',
    'dev/extra': { z: '0x0000000000000009' },
  });
  t.deepEqual(decodeVmstate(vs[1]!.desc, vs[1]!.data), { data: '68 65 6c 6c 6f' });
  // A subsection whose header disagrees with the vmdesc is a typed format error at its offset.
  const bad = Buffer.from(bytes);
  const at = bad.indexOf(Buffer.from('dev/extra', 'latin1')) - 2;
  bad[at + 2] = 0x44; // 'D'
  const err = t.throws(() => decodeBuffer(bad, { vmdesc }), { instanceOf: StreamError });
  t.is(err!.code, 'ESTREAM_FORMAT');
  t.is(err!.offset, at);
  t.is(err!.idstr, 'dev0');
});
