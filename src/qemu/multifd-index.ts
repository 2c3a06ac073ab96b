// An index of captured multifd channels (the proxy's FILE.multifd-N tees), so the pages and
// device state they carry can be read back in the order a destination applies them:
//  - RAM: the pages between a channel's (k-1)-th and k-th SYNC packet belong to round k, and
//    the destination has applied every channel's round k once it passes the main channel's
//    k-th MULTIFD_FLUSH (QEMU 10.0 multifd_ram_flush_and_sync sends one SYNC per channel per
//    flush). Within a round a page is sent once; packet_num orders the packets anyway.
//  - VFIO device state: per device (idstr, instance), the packets idx 0..last-1 are the
//    stop-copy data in order, the last (flags CONFIG_STATE) is the config blob.
// Only positions and counts are kept (a few dozen bytes per 512 KiB packet); the bytes are
// read back from the files when written out.
import { createReadStream } from 'node:fs';
import { open, readdir, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { StreamError } from './errors.js';
import { MULTIFD_DEVICE_STATE_SIZE, MULTIFD_RAM_FIXED_SIZE, MultifdDecoder, MultifdFlag, VFIO_PACKET_CONFIG_STATE, VFIO_PACKET_HEADER_SIZE, type MultifdEvent } from './multifd.js';

export interface RamPacketRef {
  channel: string;
  /** Where the packet starts in its channel file. */
  offset: number;
  packetNum: number;
  ramblock: string;
  normalPages: number;
  zeroPages: number;
}

export interface DevicePacketRef {
  channel: string;
  /** Where the VFIO packet's data (after its 12-byte header) starts in the channel file. */
  dataOffset: number;
  dataBytes: number;
  idx: number;
  config: boolean;
}

export interface MultifdChannelIndex {
  path: string;
  channelId: number;
  uuid: string;
  bytes: number;
  /** RAM packets per round: rounds[k] are those before the channel's (k+1)-th SYNC. */
  rounds: RamPacketRef[][];
  /** Packets after the last SYNC (a complete migration has none with pages). */
  tail: RamPacketRef[];
  /** packet_num of every RAM packet (SYNC and empty ones too). */
  packetNums: number[];
}

export interface MultifdIndex {
  pageSize: number;
  channels: MultifdChannelIndex[];
  /** Device state per "idstr/instance", sorted by idx. */
  devices: Map<string, DevicePacketRef[]>;
}

export function deviceKey(idstr: string, instanceId: number): string {
  return `${idstr}#${instanceId}`;
}

async function indexChannel(path: string, pageSize: number, devices: Map<string, DevicePacketRef[]>): Promise<MultifdChannelIndex> {
  const rounds: RamPacketRef[][] = [];
  let round: RamPacketRef[] = [];
  const packetNums: number[] = [];
  const onEvent = (ev: MultifdEvent): void => {
    if (ev.type === 'ram') {
      packetNums.push(ev.packetNum);
      if (ev.flags & MultifdFlag.COMPRESSION_MASK) {
        throw new StreamError('ESTREAM_UNSUPPORTED', `multifd channel ${path}: compressed RAM packets (flags ${ev.flags}) cannot be merged`, { offset: ev.offset });
      }
      if (ev.normalPages + ev.zeroPages > 0) round.push({ channel: path, offset: ev.offset, packetNum: ev.packetNum, ramblock: ev.ramblock, normalPages: ev.normalPages, zeroPages: ev.zeroPages });
      if (ev.flags & MultifdFlag.SYNC) {
        rounds.push(round);
        round = [];
      }
    } else if (ev.type === 'device-state') {
      if (!ev.vfio || ev.dataBytes < VFIO_PACKET_HEADER_SIZE) {
        throw new StreamError('ESTREAM_UNSUPPORTED', `multifd channel ${path}: device-state packet of "${ev.idstr}" is not a VFIO packet (version 0)`, { offset: ev.offset, idstr: ev.idstr });
      }
      const ref = { channel: path, dataOffset: ev.offset + MULTIFD_DEVICE_STATE_SIZE + VFIO_PACKET_HEADER_SIZE, dataBytes: ev.dataBytes - VFIO_PACKET_HEADER_SIZE, idx: ev.vfio.idx, config: (ev.vfio.flags & VFIO_PACKET_CONFIG_STATE) !== 0 };
      const key = deviceKey(ev.idstr, ev.instanceId);
      devices.set(key, [...(devices.get(key) ?? []), ref]);
    }
  };
  const dec = new MultifdDecoder({ pageSize, onEvent });
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) dec.push(chunk as Buffer);
  dec.end();
  if (!dec.init) throw new StreamError('ESTREAM_TRUNCATED', `multifd channel ${path} is empty`, { offset: 0 });
  return { path, channelId: dec.init.channelId, uuid: dec.init.uuid, bytes: dec.offset, rounds, tail: round, packetNums };
}

/** Indexes every channel file; checks they belong to one migration and each device's packets are complete. */
export async function indexMultifdChannels(paths: readonly string[], pageSize: number): Promise<MultifdIndex> {
  const devices = new Map<string, DevicePacketRef[]>();
  const channels: MultifdChannelIndex[] = [];
  for (const p of paths) channels.push(await indexChannel(p, pageSize, devices));
  const ids = new Set<number>();
  for (const c of channels) {
    if (ids.has(c.channelId)) throw new StreamError('ESTREAM_FORMAT', `multifd channel id ${c.channelId} given twice (${c.path})`, { found: c.path });
    ids.add(c.channelId);
    if (c.uuid !== channels[0]!.uuid) throw new StreamError('ESTREAM_FORMAT', `multifd channel ${c.path} comes from another QEMU (uuid ${c.uuid}, ${channels[0]!.path} has ${channels[0]!.uuid})`, { found: c.uuid });
  }
  // QEMU numbers its channels 0..N-1: a gap in the ids is a missing capture.
  [...ids].sort((a, b) => a - b).forEach((id, i) => {
    if (id !== i) throw new StreamError('ESTREAM_FORMAT', `multifd channel ${i} is missing (captures given for channels ${[...ids].sort((a, b) => a - b).join(', ')})`, { expected: String(i), found: String(id) });
  });
  // packet_num is one sequence over all channels of a migration: a gap means a channel
  // capture is missing (its pages would be silently absent from a merge).
  const nums = channels.flatMap((c) => c.packetNums).sort((a, b) => a - b);
  nums.forEach((n, i) => {
    if (n !== i) {
      throw new StreamError('ESTREAM_FORMAT', `multifd RAM packet_num ${i} is on none of the ${channels.length} channel captures given (${channels.map((c) => c.channelId).join(', ')}): a channel is missing or its capture is incomplete`, { expected: String(i), found: String(n) });
    }
  });
  for (const [key, packets] of devices) {
    packets.sort((a, b) => a.idx - b.idx);
    packets.forEach((p, i) => {
      if (p.idx !== i) throw new StreamError('ESTREAM_FORMAT', `multifd device state of ${key}: packet idx ${i} missing (found ${p.idx}); a channel capture is missing or incomplete`, { found: String(p.idx) });
    });
    const configs = packets.filter((p) => p.config);
    if (configs.length !== 1 || !packets.at(-1)!.config) {
      throw new StreamError('ESTREAM_FORMAT', `multifd device state of ${key}: the config packet must be the last one (${configs.length} config packets among ${packets.length})`, { found: String(configs.length) });
    }
  }
  return { pageSize, channels, devices };
}

/** Positional reads from the channel files, one open handle per file for the whole merge. */
export class ChannelFiles {
  private readonly handles = new Map<string, Promise<FileHandle>>();

  /** `n` bytes at `offset` of `path` (a packet: at most ~513 KiB). */
  async read(path: string, offset: number, n: number): Promise<Buffer> {
    let fh = this.handles.get(path);
    if (!fh) {
      fh = open(path, 'r');
      this.handles.set(path, fh);
    }
    const handle = await fh;
    const buf = Buffer.allocUnsafe(n);
    let got = 0;
    while (got < n) {
      const { bytesRead } = await handle.read(buf, got, n - got, offset + got);
      if (bytesRead === 0) throw new StreamError('ESTREAM_TRUNCATED', `${path} shrank while merging`, { offset: offset + got });
      got += bytesRead;
    }
    return buf;
  }

  async close(): Promise<void> {
    const all = [...this.handles.values()];
    this.handles.clear();
    for (const fh of all) await (await fh.catch(() => undefined))?.close();
  }
}

/** One RAM packet's pages: offsets of normal pages (with their data) and of zero pages. */
export async function readRamPacket(files: ChannelFiles, index: MultifdIndex, ref: RamPacketRef): Promise<{ normal: { address: number; data: Buffer }[]; zero: number[] }> {
  const pageCount = (512 * 1024) / index.pageSize;
  const headerSize = MULTIFD_RAM_FIXED_SIZE + 8 * pageCount;
  const bytes = await files.read(ref.channel, ref.offset, headerSize + ref.normalPages * index.pageSize);
  const address = (i: number): number => Number(bytes.readBigUInt64BE(MULTIFD_RAM_FIXED_SIZE + 8 * i));
  const normal = Array.from({ length: ref.normalPages }, (_, i) => ({ address: address(i), data: bytes.subarray(headerSize + i * index.pageSize, headerSize + (i + 1) * index.pageSize) }));
  const zero = Array.from({ length: ref.zeroPages }, (_, i) => address(ref.normalPages + i));
  return { normal, zero };
}

/** The proxy's channel tees of `mainPath` (`MAIN.multifd-<N>` beside it), in channel order. */
export async function channelCapturesBeside(mainPath: string): Promise<string[]> {
  const prefix = `${basename(mainPath)}.multifd-`;
  const names = (await readdir(dirname(mainPath))).filter((n) => n.startsWith(prefix) && /^\d+$/.test(n.slice(prefix.length)));
  return names.sort((a, b) => Number(a.slice(prefix.length)) - Number(b.slice(prefix.length))).map((n) => join(dirname(mainPath), n));
}
