// Event -> bytes: the exact inverse of the decoder, one event at a time. The
// StreamWriter (writer.ts) and `rewrite`/`inject` are built on it.
import { Writer } from './bytes.js';
import {
  RecordType,
  SECTION_TYPE_OF,
  VFIO_MARKERS,
  VFIO_MIG_FLAG_DEV_DATA_STATE,
} from './constants.js';
import type { StreamEvent } from './records.js';
import { StreamError } from './errors.js';

/** The be64 word every RAM record starts with: page offset | flags. */
export function ramWord(w: Writer, address: number, flags: number): void {
  w.be64(BigInt(address) | BigInt(flags));
}

function blockId(w: Writer, block: string, continued: boolean): void {
  if (!continued) w.string8(block);
}

/** Appends the bytes of one event to `w`. */
export function encodeEventInto(w: Writer, ev: StreamEvent): void {
  switch (ev.type) {
    case 'header':
      w.be32(ev.magic).be32(ev.version);
      return;
    case 'configuration': {
      const name = Buffer.from(ev.machineType, 'latin1');
      w.u8(RecordType.CONFIGURATION).be32(name.length).bytes(name);
      for (const s of ev.subsections) w.u8(RecordType.SUBSECTION).string8(s.name).be32(s.version).bytes(s.body);
      return;
    }
    case 'section': {
      w.u8(SECTION_TYPE_OF[ev.kind]).be32(ev.section.sectionId);
      if (ev.kind === 'START' || ev.kind === 'FULL') w.string8(ev.section.idstr).be32(ev.section.instanceId).be32(ev.section.versionId);
      return;
    }
    case 'footer':
      w.u8(RecordType.SECTION_FOOTER).be32(ev.section.sectionId);
      return;
    case 'command':
      w.u8(RecordType.COMMAND).be16(ev.command).be16(ev.data.length).bytes(ev.data);
      return;
    case 'eof':
      w.u8(RecordType.EOF);
      return;
    case 'vmdesc':
      w.u8(RecordType.VMDESCRIPTION).be32(ev.json.length).bytes(ev.json);
      return;
    case 'ram-mem-size':
      ramWord(w, ev.address, ev.flags);
      for (const b of ev.blocks) {
        // Its pages lie at file offsets: only mapped-ram.ts can write such a block.
        if (b.mappedRam) throw new StreamError('ESTREAM_UNSUPPORTED', `RAM block "${b.name}" is mapped-ram (pages at fixed file offsets): it cannot be written as a record stream; convert it (reframe --format raw)`, { offset: ev.offset });
        w.string8(b.name).be64(b.usedLength);
        if (b.pageSize !== undefined) w.be64(b.pageSize);
        if (b.gpa !== undefined) w.be64(b.gpa);
      }
      return;
    case 'ram-page':
      ramWord(w, ev.address, ev.flags);
      blockId(w, ev.block, ev.continued);
      w.bytes(ev.data);
      return;
    case 'ram-zero':
      ramWord(w, ev.address, ev.flags);
      blockId(w, ev.block, ev.continued);
      w.u8(ev.fill);
      return;
    case 'ram-xbzrle':
      ramWord(w, ev.address, ev.flags);
      blockId(w, ev.block, ev.continued);
      w.u8(1).be16(ev.data.length).bytes(ev.data);
      return;
    case 'ram-compressed':
      ramWord(w, ev.address, ev.flags);
      blockId(w, ev.block, ev.continued);
      w.be32(ev.data.length).bytes(ev.data);
      return;
    case 'ram-eos':
    case 'ram-multifd-flush':
      ramWord(w, ev.address, ev.flags);
      return;
    case 'vfio-marker':
    case 'vfio-multifd-placeholder':
      w.be64(VFIO_MARKERS[ev.marker]);
      return;
    case 'vfio-data':
      w.be64(VFIO_MIG_FLAG_DEV_DATA_STATE).be64(ev.size);
      return;
    case 'vfio-data-chunk':
    case 'vfio-config':
    case 'vmstate':
      w.bytes(ev.data);
      return;
  }
}

/** The bytes of one event. */
export function encodeEvent(ev: StreamEvent): Buffer {
  const w = new Writer(64);
  encodeEventInto(w, ev);
  return w.take();
}
