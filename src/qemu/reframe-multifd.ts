// Merging captured multifd channels back into the main stream, for reframe: what a
// destination would have received over the channels is written where a non-multifd stream
// carries it, so a file load (which has no channels) gets everything.
//  - RAM round k (all channels' pages before their k-th SYNC) goes into the RAM section just
//    where the main channel's k-th MULTIFD_FLUSH was, as PAGE and ZERO records (the block
//    named once per packet, CONTINUE after it); the flush record goes, as in a stream QEMU
//    writes without multifd.
//  - A VFIO device's stop-copy packets become DATA_STATE records in its END section (whose
//    main-channel body was only END_OF_STATE), its config packet the body of its FULL
//    section (DEV_CONFIG_STATE .. END_OF_STATE): withMultifdDeviceState() does that at the
//    event level for reframe and restore alike; reframe then gives the vmdesc entry of that
//    FULL section the new size (MultifdMerge.vmdescJson).
import { VFIO_MARKERS } from './constants.js';
import { StreamError } from './errors.js';
import { ChannelFiles, deviceKey, readRamPacket, type MultifdIndex } from './multifd-index.js';
import type { RamMultifdFlushEvent, SectionRef, StreamEvent } from './records.js';
import type { StreamWriter } from './writer.js';

export interface MergedRound {
  round: number;
  packets: number;
  normalPages: number;
  zeroPages: number;
}

/** The config blob inside a config packet, which must be DEV_CONFIG_STATE, blob, END_OF_STATE. */
function configPacketBlob(body: Buffer, section: SectionRef, at: number): Buffer {
  if (body.length < 16 || body.readBigUInt64BE(0) !== VFIO_MARKERS.DEV_CONFIG_STATE || body.readBigUInt64BE(body.length - 8) !== VFIO_MARKERS.END_OF_STATE) {
    throw new StreamError('ESTREAM_FORMAT', `the config packet of ${section.idstr} on multifd is not DEV_CONFIG_STATE .. END_OF_STATE`, { offset: at, sectionId: section.sectionId, idstr: section.idstr });
  }
  return body.subarray(8, body.length - 8);
}

export class MultifdMerge {
  private flushes = 0;
  /** FULL sizes to put into the vmdesc, by "idstr#instance". */
  private readonly fullSizes = new Map<string, number>();
  private readonly files = new ChannelFiles();

  constructor(readonly index: MultifdIndex) {}

  /** Closes the channel files. */
  close(): Promise<void> {
    return this.files.close();
  }

  get channelCount(): number {
    return this.index.channels.length;
  }

  /** Writes round `k` (this flush's) of every channel into the open RAM section. */
  async beforeFlush(w: StreamWriter, flush: RamMultifdFlushEvent): Promise<MergedRound> {
    const k = this.flushes++;
    const packets = this.index.channels.flatMap((c) => {
      if (k >= c.rounds.length) {
        throw new StreamError('ESTREAM_FORMAT', `MULTIFD_FLUSH #${k + 1} has no SYNC on multifd channel ${c.channelId} (${c.path} has ${c.rounds.length}): the channel capture is incomplete`, { offset: flush.offset, sectionId: flush.section.sectionId, idstr: flush.section.idstr });
      }
      return c.rounds[k]!;
    }).sort((a, b) => a.packetNum - b.packetNum);
    const merged: MergedRound = { round: k, packets: packets.length, normalPages: 0, zeroPages: 0 };
    for (const ref of packets) {
      const { normal, zero } = await readRamPacket(this.files, this.index, ref);
      await w.ramPages(ref.ramblock, normal, zero);
      merged.normalPages += normal.length;
      merged.zeroPages += zero.length;
    }
    return merged;
  }

  /** A merged config packet of `bytes` (its FULL body): the vmdesc entry gets that size. */
  fullMerged(section: SectionRef, bytes: number): void {
    this.fullSizes.set(deviceKey(section.idstr, section.instanceId), bytes);
  }

  /**
   * The vmdesc JSON with the merged FULL sections' sizes (edited on QEMU's own JSON, so keys
   * this codec does not model survive), or null when none changed.
   */
  vmdescJson(json: Buffer): Buffer | null {
    if (this.fullSizes.size === 0) return null;
    type RawField = { name?: unknown; type?: unknown; size?: unknown };
    type RawDevice = { name?: unknown; instance_id?: unknown; size?: unknown; fields?: RawField[] };
    const raw = JSON.parse(json.toString('utf8')) as { devices?: RawDevice[] };
    for (const d of raw.devices ?? []) {
      const size = this.fullSizes.get(deviceKey(String(d.name), Number(d.instance_id)));
      if (size === undefined) continue;
      d.size = size;
      for (const f of d.fields ?? []) if (f.name === 'data' && f.type === 'buffer') f.size = size;
    }
    return Buffer.from(JSON.stringify(raw), 'utf8');
  }

  /** After the stream: every round was used. */
  finish(eofOffset: number): void {
    for (const c of this.index.channels) {
      if (c.rounds.length !== this.flushes) {
        throw new StreamError('ESTREAM_FORMAT', `multifd channel ${c.channelId} (${c.path}) has ${c.rounds.length} SYNC packets, the main stream ${this.flushes} MULTIFD_FLUSH records: not the same migration, or a capture is incomplete`, { offset: eofOffset });
      }
      if (c.tail.length > 0) {
        throw new StreamError('ESTREAM_FORMAT', `multifd channel ${c.channelId} (${c.path}) has ${c.tail.length} page packets after its last SYNC: they were never flushed`, { offset: eofOffset });
      }
    }
  }
}

/** What withMultifdDeviceState put back, at the offset of the dummy marker it stood in for. */
export type DeviceStateMerged =
  | { kind: 'stop-copy'; section: SectionRef; offset: number; bytes: number; packets: number }
  | { kind: 'config'; section: SectionRef; offset: number; marker: 'END_OF_STATE' | 'DEV_CONFIG_LOAD_READY'; bytes: number };

/**
 * The main channel's events with every VFIO device's multifd device state put back where a
 * stream without multifd has it: its stop-copy packets as vfio-data + vfio-data-chunk
 * events at the start of its (dummy) END section, its config packet (DEV_CONFIG_STATE,
 * vfio-config, END_OF_STATE) in place of the FULL's multifd placeholder. RAM stays on the channels (restore
 * needs no page; reframe merges pages itself). `onMerged` hears of each piece put back.
 */
export async function* withMultifdDeviceState(events: AsyncIterable<StreamEvent>, index: MultifdIndex, onMerged?: (m: DeviceStateMerged) => void): AsyncGenerator<StreamEvent, void, undefined> {
  const files = new ChannelFiles();
  const used = new Set<string>();
  try {
    let endOpened: SectionRef | null = null;
    let lastOffset = 0;
    for await (const ev of events) {
      lastOffset = ev.offset;
      const end = endOpened;
      endOpened = ev.type === 'section' && ev.section.handler === 'vfio' && ev.kind === 'END' ? ev.section : null;
      // The stop-copy packets go first in the END section (its END_OF_STATE follows them).
      const endPackets = end && ev.type === 'vfio-marker' && ev.marker === 'END_OF_STATE' ? index.devices.get(deviceKey(end.idstr, end.instanceId)) : undefined;
      if (end && endPackets) {
        const at = { offset: ev.offset, section: end };
        used.add(deviceKey(end.idstr, end.instanceId));
        const data = endPackets.filter((x) => !x.config);
        onMerged?.({ kind: 'stop-copy', ...at, bytes: data.reduce((n, p) => n + p.dataBytes, 0), packets: data.length });
        for (const p of data) {
          yield { ...at, type: 'vfio-data', size: p.dataBytes, sectionKind: 'END' };
          yield { ...at, type: 'vfio-data-chunk', data: await files.read(p.channel, p.dataOffset, p.dataBytes) };
        }
      }
      const cfgPackets = ev.type === 'vfio-multifd-placeholder' ? index.devices.get(deviceKey(ev.section.idstr, ev.section.instanceId)) : undefined;
      if (ev.type === 'vfio-multifd-placeholder' && cfgPackets) {
        // The placeholder stands for the config packet: DEV_CONFIG_STATE, the blob, END_OF_STATE.
        const at = { offset: ev.offset, section: ev.section };
        const cfg = cfgPackets.at(-1)!;
        const blob = configPacketBlob(await files.read(cfg.channel, cfg.dataOffset, cfg.dataBytes), ev.section, ev.offset);
        onMerged?.({ kind: 'config', ...at, marker: ev.marker, bytes: cfg.dataBytes });
        yield { ...at, type: 'vfio-marker', marker: 'DEV_CONFIG_STATE' };
        yield { ...at, type: 'vfio-config', data: blob };
        yield { ...at, type: 'vfio-marker', marker: 'END_OF_STATE' };
        continue;
      }
      yield ev;
    }
    for (const key of index.devices.keys()) {
      if (!used.has(key)) throw new StreamError('ESTREAM_FORMAT', `multifd device state for ${key} has no VFIO END section in the main stream`, { offset: lastOffset });
    }
  } finally {
    await files.close();
  }
}
