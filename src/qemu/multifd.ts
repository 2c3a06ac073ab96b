// Incremental decoder of one QEMU multifd channel (QEMU 10.0 migration/multifd.h,
// multifd.c, multifd-nocomp.c, multifd-device-state.c), for observing a channel while it
// is forwarded: only headers are held (at most one packet header), payloads are counted
// and skipped, so memory stays bounded whatever the channel carries.
//
// Layout, as real QEMU 10.0.2 puts it on the wire (checked by decoding captured channels):
//   once:     MultiFDInit_t, 64 bytes: be32 magic 0x11223344, be32 version 1, 16-byte UUID,
//             u8 channel id, 7 + 32 bytes of padding
//   packets:  MultiFDPacketHdr_t: be32 magic, be32 version 1, be32 flags, then
//     flags & DEVICE_STATE (0x40): char idstr[256], be32 instance_id, be32 next_packet_size
//             (276 bytes), then next_packet_size bytes (VFIO: be32 version 0, be32 idx,
//             be32 flags (1 = config state), data)
//     else (RAM): be32 pages_alloc, be32 normal_pages, be32 next_packet_size, be64 packet_num,
//             be32 zero_pages, be32 unused, 3 x be64 unused, char ramblock[256] (320 bytes),
//             then be64 offset[] for the FULL page count of a packet (512 KiB / page size:
//             128 entries, 1344 bytes in all with 4 KiB pages), whatever normal + zero are
//             (QEMU reads and writes the fixed packet_len; SYNC packets even carry
//             pages_alloc 0), then next_packet_size bytes of page data (uncompressed:
//             normal_pages x page size).
import { StreamError, hex } from './errors.js';

export const MULTIFD_MAGIC = 0x11223344;
export const MULTIFD_VERSION = 1;
/** sizeof(MultiFDInit_t). */
export const MULTIFD_INIT_SIZE = 64;
/** sizeof(MultiFDPacketHdr_t). */
export const MULTIFD_HEADER_SIZE = 12;
/** sizeof(MultiFDPacket_t) without its offset[] array. */
export const MULTIFD_RAM_FIXED_SIZE = 320;
/** sizeof(MultiFDPacketDeviceState_t). */
export const MULTIFD_DEVICE_STATE_SIZE = 276;
/** MULTIFD_PACKET_SIZE: the page data one RAM packet can carry. */
export const MULTIFD_PACKET_BYTES = 512 * 1024;

export const MultifdFlag = {
  SYNC: 0x01,
  /** Compression method bits (0 = none, 2 zlib, 4 zstd, 8 qpl, 0x10 uadk, 0x20 qatzip). */
  COMPRESSION_MASK: 0x3e,
  DEVICE_STATE: 0x40,
} as const;

/** VFIO_DEVICE_STATE_CONFIG_STATE in a VFIO device-state packet's flags. */
export const VFIO_PACKET_CONFIG_STATE = 1;
/** The VFIO device-state packet header (version, idx, flags). */
export const VFIO_PACKET_HEADER_SIZE = 12;

export interface MultifdInit {
  offset: number;
  version: number;
  /** The source's QEMU UUID, 32 hex digits (all zero unless -uuid was given). */
  uuid: string;
  channelId: number;
}

export interface MultifdRamPacket {
  type: 'ram';
  offset: number;
  flags: number;
  pagesAlloc: number;
  normalPages: number;
  zeroPages: number;
  /** Bytes of page data after the header. */
  dataBytes: number;
  /** Global packet number across all channels (orders the packets of a migration). */
  packetNum: number;
  ramblock: string;
  /** Packet header bytes (fixed for a page size) + data bytes. */
  size: number;
}

export interface MultifdDeviceStatePacket {
  type: 'device-state';
  offset: number;
  flags: number;
  idstr: string;
  instanceId: number;
  /** Bytes of device-state payload after the 276-byte header. */
  dataBytes: number;
  /** The VFIO packet header at the start of the payload, when the payload has one (version 0). */
  vfio: { version: number; idx: number; flags: number } | null;
  size: number;
}

export type MultifdEvent = { type: 'init'; init: MultifdInit } | MultifdRamPacket | MultifdDeviceStatePacket;

export interface MultifdDecoderOptions {
  /** Target page size (default 4096): fixes the RAM packet header length and the page data size. */
  pageSize?: number;
  onEvent?: (ev: MultifdEvent) => void;
}

function cString(b: Buffer): string {
  const nul = b.indexOf(0);
  return b.subarray(0, nul < 0 ? b.length : nul).toString('latin1');
}

type Phase =
  | { kind: 'init' }
  | { kind: 'header' }
  | { kind: 'ram-header'; flags: number }
  | { kind: 'dev-header'; flags: number }
  /** Skipping payload bytes; `vfio` collects a device-state payload's first 12 bytes. */
  | { kind: 'payload'; left: number; event: MultifdRamPacket | MultifdDeviceStatePacket; vfio: Buffer | null };

/**
 * Push bytes in order; events come out through `onEvent` as soon as each header (and, for
 * device-state packets, the VFIO header) is complete. Throws a StreamError naming the
 * channel offset on a malformed channel; after that it stays stopped.
 */
export class MultifdDecoder {
  readonly pageSize: number;
  /** The fixed RAM packet header length for this page size. */
  readonly ramHeaderSize: number;
  private readonly pageCount: number;
  private phase: Phase = { kind: 'init' };
  /** Header bytes collected so far (at most one header). */
  private head: Buffer[] = [];
  private headBytes = 0;
  private pos = 0;
  private packetStart = 0;
  private failed: StreamError | undefined;
  init: MultifdInit | undefined;

  constructor(private readonly opts: MultifdDecoderOptions = {}) {
    const ps = opts.pageSize ?? 4096;
    if (!Number.isInteger(ps) || ps < 512 || ps > MULTIFD_PACKET_BYTES || (ps & (ps - 1)) !== 0) {
      throw new StreamError('ESTREAM_FORMAT', 'multifd: the page size must be a power of two between 512 and 512 KiB', { found: String(ps) });
    }
    this.pageSize = ps;
    this.pageCount = MULTIFD_PACKET_BYTES / ps;
    this.ramHeaderSize = MULTIFD_RAM_FIXED_SIZE + 8 * this.pageCount;
  }

  /** Bytes consumed so far. */
  get offset(): number {
    return this.pos;
  }

  /** True between packets (after the init): a channel may end here cleanly. */
  get atBoundary(): boolean {
    return this.phase.kind === 'header' && this.headBytes === 0;
  }

  /** Where the packet (or init) being read started. */
  get currentPacketOffset(): number {
    return this.packetStart;
  }

  get error(): StreamError | undefined {
    return this.failed;
  }

  push(chunk: Buffer): void {
    if (this.failed) throw this.failed;
    try {
      this.consume(chunk);
    } catch (e) {
      this.failed = e instanceof StreamError ? e : new StreamError('ESTREAM_FORMAT', `multifd: ${e instanceof Error ? e.message : String(e)}`, { offset: this.pos });
      throw this.failed;
    }
  }

  /** Throws when the channel ended inside the init or a packet. */
  end(): void {
    if (this.failed) throw this.failed;
    if (this.phase.kind === 'init' && this.headBytes === 0 && this.pos === 0) return;
    if (!this.atBoundary) {
      this.failed = new StreamError('ESTREAM_TRUNCATED', `multifd: the channel ended inside ${this.phase.kind === 'init' ? 'the init packet' : 'a packet'} that started at ${this.packetStart}`, { offset: this.pos });
      throw this.failed;
    }
  }

  private consume(chunk: Buffer): void {
    let p = 0;
    while (p < chunk.length) {
      const ph = this.phase;
      if (ph.kind === 'payload') {
        const n = Math.min(ph.left, chunk.length - p);
        if (ph.vfio && ph.vfio.length < VFIO_PACKET_HEADER_SIZE) {
          const want = Math.min(VFIO_PACKET_HEADER_SIZE - ph.vfio.length, n);
          ph.vfio = Buffer.concat([ph.vfio, chunk.subarray(p, p + want)]);
        }
        ph.left -= n;
        p += n;
        this.pos += n;
        if (ph.left === 0) this.finishPayload(ph);
        continue;
      }
      const need = this.headerLength(ph) - this.headBytes;
      const n = Math.min(need, chunk.length - p);
      // A packet starts with its init or common header (the rest of a header continues it).
      if (this.headBytes === 0 && (ph.kind === 'init' || ph.kind === 'header')) this.packetStart = this.pos;
      this.head.push(chunk.subarray(p, p + n));
      this.headBytes += n;
      p += n;
      this.pos += n;
      if (n === need) {
        const h = this.head.length === 1 ? this.head[0]! : Buffer.concat(this.head);
        this.head = [];
        this.headBytes = 0;
        this.onHeader(ph, h);
      }
    }
  }

  private headerLength(ph: Exclude<Phase, { kind: 'payload' }>): number {
    switch (ph.kind) {
      case 'init': return MULTIFD_INIT_SIZE;
      case 'header': return MULTIFD_HEADER_SIZE;
      // The rest of the packet after the 12-byte common header (QEMU reads it in two steps too).
      case 'ram-header': return this.ramHeaderSize - MULTIFD_HEADER_SIZE;
      case 'dev-header': return MULTIFD_DEVICE_STATE_SIZE - MULTIFD_HEADER_SIZE;
    }
  }

  private checkMagicVersion(h: Buffer, what: string): void {
    const magic = h.readUInt32BE(0);
    if (magic !== MULTIFD_MAGIC) throw new StreamError('ESTREAM_FORMAT', `multifd: bad ${what} magic`, { offset: this.packetStart, expected: hex(MULTIFD_MAGIC, 8), found: hex(magic, 8) });
    const version = h.readUInt32BE(4);
    if (version !== MULTIFD_VERSION) throw new StreamError('ESTREAM_UNSUPPORTED', `multifd: ${what} version ${version}`, { offset: this.packetStart + 4, expected: String(MULTIFD_VERSION), found: String(version) });
  }

  private onHeader(ph: Exclude<Phase, { kind: 'payload' }>, h: Buffer): void {
    switch (ph.kind) {
      case 'init': {
        this.checkMagicVersion(h, 'init packet');
        this.init = { offset: this.packetStart, version: h.readUInt32BE(4), uuid: h.subarray(8, 24).toString('hex'), channelId: h[24]! };
        this.phase = { kind: 'header' };
        this.opts.onEvent?.({ type: 'init', init: this.init });
        return;
      }
      case 'header': {
        this.checkMagicVersion(h, 'packet');
        const flags = h.readUInt32BE(8);
        this.phase = flags & MultifdFlag.DEVICE_STATE ? { kind: 'dev-header', flags } : { kind: 'ram-header', flags };
        return;
      }
      case 'ram-header': {
        // Offsets below are into the whole packet; `h` starts after the 12-byte common header.
        const at = (o: number): number => o - MULTIFD_HEADER_SIZE;
        const pagesAlloc = h.readUInt32BE(at(12));
        const normalPages = h.readUInt32BE(at(16));
        const dataBytes = h.readUInt32BE(at(20));
        const packetNum = Number(h.readBigUInt64BE(at(24)));
        const zeroPages = h.readUInt32BE(at(32));
        const ramblock = cString(h.subarray(at(64), at(320)));
        if (pagesAlloc > this.pageCount) {
          throw new StreamError('ESTREAM_FORMAT', `multifd: RAM packet pages_alloc ${pagesAlloc} exceeds the ${this.pageCount} pages of a packet (page size ${this.pageSize})`, { offset: this.packetStart + 12 });
        }
        if (normalPages + zeroPages > this.pageCount) {
          throw new StreamError('ESTREAM_FORMAT', `multifd: RAM packet has ${normalPages} normal + ${zeroPages} zero pages, more than the ${this.pageCount} of a packet`, { offset: this.packetStart + 16 });
        }
        if ((ph.flags & MultifdFlag.COMPRESSION_MASK) === 0 && dataBytes !== normalPages * this.pageSize) {
          throw new StreamError('ESTREAM_FORMAT', `multifd: uncompressed RAM packet with ${normalPages} normal pages carries ${dataBytes} data bytes (page size ${this.pageSize})`, { offset: this.packetStart + 20, expected: String(normalPages * this.pageSize), found: String(dataBytes) });
        }
        const ev: MultifdRamPacket = { type: 'ram', offset: this.packetStart, flags: ph.flags, pagesAlloc, normalPages, zeroPages, dataBytes, packetNum, ramblock, size: this.ramHeaderSize + dataBytes };
        this.startPayload(ev, null);
        return;
      }
      case 'dev-header': {
        const at = (o: number): number => o - MULTIFD_HEADER_SIZE;
        const idstr = cString(h.subarray(at(12), at(268)));
        const instanceId = h.readUInt32BE(at(268));
        const dataBytes = h.readUInt32BE(at(272));
        const ev: MultifdDeviceStatePacket = { type: 'device-state', offset: this.packetStart, flags: ph.flags, idstr, instanceId, dataBytes, vfio: null, size: MULTIFD_DEVICE_STATE_SIZE + dataBytes };
        this.startPayload(ev, Buffer.alloc(0));
        return;
      }
    }
  }

  private startPayload(ev: MultifdRamPacket | MultifdDeviceStatePacket, vfio: Buffer | null): void {
    const ph: Phase = { kind: 'payload', left: ev.dataBytes, event: ev, vfio };
    this.phase = ph;
    if (ev.dataBytes === 0) this.finishPayload(ph);
  }

  private finishPayload(ph: Extract<Phase, { kind: 'payload' }>): void {
    const ev = ph.event;
    if (ev.type === 'device-state' && ph.vfio && ph.vfio.length >= VFIO_PACKET_HEADER_SIZE && ph.vfio.readUInt32BE(0) === 0) {
      ev.vfio = { version: 0, idx: ph.vfio.readUInt32BE(4), flags: ph.vfio.readUInt32BE(8) };
    }
    this.phase = { kind: 'header' };
    this.opts.onEvent?.(ev);
  }
}

/** Per device (idstr, instance) on one channel. */
export interface MultifdDeviceTally {
  idstr: string;
  instanceId: number;
  packets: number;
  /** Payload bytes (after the 276-byte headers). */
  bytes: number;
  /** A VFIO packet with the config-state flag (the device's last packet) went over this channel. */
  configPacket: boolean;
  /** VFIO packet idx values seen, lowest and highest (null when no payload had a VFIO header). */
  idx: { min: number; max: number } | null;
}

/** What one channel carried. */
export interface MultifdTally {
  /** From the init packet. */
  channel: number | null;
  uuid: string | null;
  /** Bytes decoded (up to where decoding stopped, if it did). */
  decodedBytes: number;
  /** Packets after the init (RAM, SYNC and device-state alike). */
  packets: number;
  /** RAM packets that carried pages. */
  ramPackets: number;
  ramPages: { normal: number; zero: number };
  /** Page data bytes of RAM packets. */
  ramDataBytes: number;
  /** Packets with the SYNC flag. */
  syncs: number;
  /** Lowest and highest RAM packet_num (a migration-wide sequence shared by all channels). */
  packetNums: { min: number; max: number } | null;
  /** Offsets of the SYNC packets (the first 64). */
  syncOffsets: number[];
  deviceState: MultifdDeviceTally[];
  /** Compression method bits seen on RAM packets (0 = none). */
  compression: number[];
}

const KEEP_SYNC_OFFSETS = 64;

/** Adds up a channel's events. */
export class MultifdTallier {
  private readonly t: MultifdTally = {
    channel: null, uuid: null, decodedBytes: 0, packets: 0, ramPackets: 0, ramPages: { normal: 0, zero: 0 }, ramDataBytes: 0,
    syncs: 0, packetNums: null, syncOffsets: [], deviceState: [], compression: [],
  };
  private readonly devices = new Map<string, MultifdDeviceTally>();

  add(ev: MultifdEvent): void {
    const t = this.t;
    if (ev.type === 'init') {
      t.channel = ev.init.channelId;
      t.uuid = ev.init.uuid;
      return;
    }
    t.packets++;
    if (ev.flags & MultifdFlag.SYNC) {
      t.syncs++;
      if (t.syncOffsets.length < KEEP_SYNC_OFFSETS) t.syncOffsets.push(ev.offset);
    }
    if (ev.type === 'ram') {
      if (ev.normalPages + ev.zeroPages > 0) t.ramPackets++;
      t.ramPages.normal += ev.normalPages;
      t.ramPages.zero += ev.zeroPages;
      t.ramDataBytes += ev.dataBytes;
      // SYNC-only packets carry packet_num too; the range covers every RAM-kind packet.
      t.packetNums = t.packetNums ? { min: Math.min(t.packetNums.min, ev.packetNum), max: Math.max(t.packetNums.max, ev.packetNum) } : { min: ev.packetNum, max: ev.packetNum };
      const comp = ev.flags & MultifdFlag.COMPRESSION_MASK;
      if (!t.compression.includes(comp)) t.compression.push(comp);
      return;
    }
    const key = `${ev.idstr}\u0000${ev.instanceId}`;
    let d = this.devices.get(key);
    if (!d) {
      d = { idstr: ev.idstr, instanceId: ev.instanceId, packets: 0, bytes: 0, configPacket: false, idx: null };
      this.devices.set(key, d);
      t.deviceState.push(d);
    }
    d.packets++;
    d.bytes += ev.dataBytes;
    if (ev.vfio) {
      if (ev.vfio.flags & VFIO_PACKET_CONFIG_STATE) d.configPacket = true;
      d.idx = d.idx ? { min: Math.min(d.idx.min, ev.vfio.idx), max: Math.max(d.idx.max, ev.vfio.idx) } : { min: ev.vfio.idx, max: ev.vfio.idx };
    }
  }

  result(decodedBytes: number): MultifdTally {
    const t = this.t;
    return {
      ...t, decodedBytes, ramPages: { ...t.ramPages }, packetNums: t.packetNums ? { ...t.packetNums } : null, syncOffsets: [...t.syncOffsets],
      compression: [...t.compression], deviceState: t.deviceState.map((d) => ({ ...d, idx: d.idx ? { ...d.idx } : null })),
    };
  }
}
