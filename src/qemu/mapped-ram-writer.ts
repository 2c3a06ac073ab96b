// Writing a mapped-ram stream (§6.7), the layout QEMU 9.0+ writes to a `file:` with the
// mapped-ram capability (libvirt's "sparse" images): the records go to the file in order,
// except that after each block's MEM_SIZE entry come its header, its bitmap and its page
// area, and the records go on after the area. Pages are written at their place in the area
// (a later copy of a page overwrites it, a ZERO page clears its bit: mapped-ram stores no
// zero pages), and the bitmaps are written last. Memory: one bit per page of the bitmaps
// (32 KiB per GiB of RAM) besides the writer's buffer; the pages stream through.
import { Writer } from './bytes.js';
import { CAP_MAPPED_RAM, CONFIG_SUBSECTION_CAPABILITIES, CONFIG_SUBSECTION_UUID, MAPPED_RAM_ALIGNMENT, MAPPED_RAM_VERSION } from './constants.js';
import { ramWord } from './encode.js';
import { StreamError } from './errors.js';
import { mappedRamBitmapBytes } from './ram.js';
import type { ConfigurationEvent, RamMemSizeEvent, StreamEvent } from './records.js';
import { StreamWriter, type WriterSink } from './writer.js';

/** Where the bytes go: positional writes into one file (an OutputFile). */
export interface PositionalFile {
  write(data: Uint8Array, position: number): Promise<void>;
}

/** Largest write of consecutive pages. */
const MAX_RUN_BYTES = 1 << 20;

interface BlockArea {
  usedLength: number;
  bitmapAt: number;
  pagesAt: number;
  bitmap: Uint8Array;
}

/** The CONFIGURATION record with mapped-ram added to its capability list (created where QEMU puts it: before the uuid). */
export function withMappedRamCapability(ev: ConfigurationEvent): ConfigurationEvent {
  const body = (caps: string[]): Buffer => {
    const w = new Writer(64).be32(caps.length);
    for (const c of caps) w.string8(c);
    return w.take();
  };
  const at = ev.subsections.findIndex((s) => s.name === CONFIG_SUBSECTION_CAPABILITIES);
  const subsections = [...ev.subsections];
  if (at >= 0) {
    const caps = subsections[at]!.capabilities ?? [];
    if (caps.includes(CAP_MAPPED_RAM)) return ev;
    const capabilities = [...caps, CAP_MAPPED_RAM];
    subsections[at] = { ...subsections[at]!, body: body(capabilities), capabilities };
  } else {
    const uuid = subsections.findIndex((s) => s.name === CONFIG_SUBSECTION_UUID);
    subsections.splice(uuid >= 0 ? uuid : subsections.length, 0, { name: CONFIG_SUBSECTION_CAPABILITIES, version: 1, body: body([CAP_MAPPED_RAM]), capabilities: [CAP_MAPPED_RAM] });
  }
  return { ...ev, subsections };
}

/**
 * A StreamWriter that lays RAM out as mapped-ram. Give it the plain stream's events (a
 * mapped-ram input flattened first, mapped-ram.ts); call finish() at the end for the bitmaps.
 */
export class MappedRamStreamWriter extends StreamWriter {
  private readonly blocks = new Map<string, BlockArea>();
  private readonly state: { pos: number };
  /** Consecutive pages of one block not yet written (one write per run, at most MAX_RUN_BYTES). */
  private run: { area: BlockArea; address: number; data: Buffer[]; bytes: number } | undefined;
  /** Pages stored in the page areas (set bits), counted when the bitmaps are written. */
  pagesStored = 0;

  /** `start`: file offset of the stream's first byte (after a libvirt header); `pageSize`: the stream's. */
  constructor(private readonly file: PositionalFile, start: number, private readonly pageSize: number) {
    const state = { pos: start };
    const sink: WriterSink = {
      write(chunk) {
        const at = state.pos;
        state.pos += chunk.length;
        return file.write(chunk, at);
      },
    };
    super(sink);
    this.state = state;
  }

  /** File offset after the last byte written (the file's size). */
  get end(): number {
    return this.state.pos;
  }

  override async event(ev: StreamEvent): Promise<void> {
    switch (ev.type) {
      case 'configuration':
        return super.event(withMappedRamCapability(ev));
      case 'ram-mem-size':
        return this.memSize(ev);
      case 'ram-page':
        return this.page(ev.block, ev.address, ev.data, ev.offset);
      case 'ram-zero':
        if (ev.fill !== 0) return this.page(ev.block, ev.address, Buffer.alloc(this.pageSize, ev.fill), ev.offset);
        this.area(ev.block, ev.offset);
        this.setBit(ev.block, ev.address, false);
        return;
      case 'ram-xbzrle':
      case 'ram-compressed':
      case 'ram-multifd-flush':
        throw new StreamError('ESTREAM_UNSUPPORTED', `a ${ev.type.slice(4)} RAM record cannot be laid out as mapped-ram (QEMU allows mapped-ram with plain pages only)`, { offset: ev.offset, sectionId: ev.section.sectionId, idstr: ev.section.idstr });
      default:
        return super.event(ev);
    }
  }

  override async ramPages(block: string, pages: readonly { address: number; data: Buffer }[], zeroPages: readonly number[] = []): Promise<void> {
    for (const p of pages) await this.page(block, p.address, p.data, undefined);
    for (const a of zeroPages) {
      this.area(block, undefined);
      this.setBit(block, a, false);
    }
  }

  /** Writes the bitmaps (QEMU writes them when the migration completes) after flushing the records. */
  async finish(): Promise<void> {
    await this.flush();
    await this.writeRun();
    for (const b of this.blocks.values()) {
      await this.file.write(b.bitmap, b.bitmapAt);
      for (const byte of b.bitmap) for (let v = byte; v; v &= v - 1) this.pagesStored++;
    }
  }

  private async memSize(ev: RamMemSizeEvent): Promise<void> {
    if (this.blocks.size > 0) throw new StreamError('ESTREAM_UNSUPPORTED', 'a second RAM block list (MEM_SIZE): the mapped-ram page areas are already laid out', { offset: ev.offset });
    await this.flush();
    const pageSize = this.pageSize;
    let w = new Writer(256);
    ramWord(w, ev.address, ev.flags);
    for (const b of ev.blocks) {
      w.string8(b.name).be64(b.usedLength);
      if (b.pageSize !== undefined) w.be64(b.pageSize);
      if (b.gpa !== undefined) w.be64(b.gpa);
      const headerAt = this.state.pos + w.length;
      const bitmapAt = headerAt + 4 + 8 + 8 + 8;
      const bitmapBytes = mappedRamBitmapBytes(b.usedLength, pageSize);
      const pagesAt = Math.ceil((bitmapAt + bitmapBytes) / MAPPED_RAM_ALIGNMENT) * MAPPED_RAM_ALIGNMENT;
      w.be32(MAPPED_RAM_VERSION).be64(BigInt(pageSize)).be64(BigInt(bitmapAt)).be64(BigInt(pagesAt));
      const bytes = w.take();
      const at = this.state.pos;
      await this.file.write(bytes, at);
      this.state.pos = pagesAt + b.usedLength;
      this.blocks.set(b.name, { usedLength: b.usedLength, bitmapAt, pagesAt, bitmap: new Uint8Array(bitmapBytes) });
      w = new Writer(256);
    }
  }

  private area(block: string, offset: number | undefined): BlockArea {
    const b = this.blocks.get(block);
    if (!b) throw new StreamError('ESTREAM_FORMAT', `RAM page for block "${block}" before or outside the block list`, offset !== undefined ? { offset } : {});
    return b;
  }

  private setBit(block: string, address: number, on: boolean): void {
    const b = this.blocks.get(block)!;
    const page = address / this.pageSize;
    if (on) b.bitmap[page >>> 3]! |= 1 << (page & 7);
    else b.bitmap[page >>> 3]! &= ~(1 << (page & 7));
  }

  private async page(block: string, address: number, data: Buffer, offset: number | undefined): Promise<void> {
    const area = this.area(block, offset);
    const r = this.run;
    if (!r || r.area !== area || r.address + r.bytes !== address || r.bytes + data.length > MAX_RUN_BYTES) {
      await this.writeRun();
      this.run = { area, address, data: [data], bytes: data.length };
    } else {
      r.data.push(data);
      r.bytes += data.length;
    }
    this.setBit(block, address, true);
  }

  private async writeRun(): Promise<void> {
    const r = this.run;
    if (!r) return;
    this.run = undefined;
    await this.file.write(r.data.length === 1 ? r.data[0]! : Buffer.concat(r.data, r.bytes), r.area.pagesAt + r.address);
  }
}
