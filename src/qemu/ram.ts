// The "ram" iterative section body (§6): a run of records, each a be64 word
// `offset | flags`, ending with EOS. Pages stream through one at a time.
import {
  MAPPED_RAM_HEADER_BYTES,
  MAPPED_RAM_VERSION,
  RamFlag,
  RAM_FLAGS_KNOWN,
  XBZRLE_ENCODING_FLAG,
} from './constants.js';
import type { DecodeContext, Step } from './context.js';
import { hex } from './errors.js';
import type { MappedRamHeader, RamBlockInfo, SectionRef } from './records.js';

/** What the RAM decoder must know from earlier records. */
export interface RamContext {
  pageSize: number;
  /** x-ignore-shared in the CONFIGURATION capabilities: each block carries its GPA (§6.2). */
  ignoreShared: boolean;
  /** mapped-ram in the capabilities: pages live at file offsets outside the stream (§6.7). */
  mappedRam: boolean;
  /** File offset of the stream's first byte (mapped-ram headers hold file offsets). */
  fileOffset: number;
  /** A POSTCOPY_ADVISE with postcopy-ram was seen; its page-size summary (OR of all block page sizes). */
  postcopy?: { pageSummary: bigint };
  /** Caller knowledge for the postcopy page-size field, when it cannot be told from the bytes. */
  blockPageSizes?: ReadonlyMap<string, number>;
  /** Blocks from the MEM_SIZE list, and the block of the last page record (for CONTINUE). */
  blocks: Map<string, RamBlockInfo>;
  lastBlock?: string;
}

/** zlib compressBound(len) (zlib.h): QEMU rejects a COMPRESS_PAGE longer than compressBound(TARGET_PAGE_SIZE). */
export function compressBound(len: number): number {
  return len + (len >>> 12) + (len >>> 14) + (len >>> 25) + 13;
}

function isPow2(v: bigint): boolean {
  return v > 0n && (v & (v - 1n)) === 0n;
}

export function* decodeRamBody(ctx: DecodeContext, sec: SectionRef, rc: RamContext): Step {
  const r = ctx.r;
  const mask = BigInt(rc.pageSize - 1);
  for (;;) {
    const at = r.offset;
    yield* ctx.need(8, 'a RAM record address word', sec);
    const word = r.be64();
    const flags = Number(word & mask);
    const addrBig = word & ~mask;
    if (addrBig > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw ctx.error('ESTREAM_LIMIT', 'RAM address word beyond 2^53', { offset: at, section: sec, found: hex(word) });
    }
    const address = Number(addrBig);
    if (flags & ~RAM_FLAGS_KNOWN) {
      throw ctx.error('ESTREAM_FORMAT', 'unknown RAM flag bits', { offset: at, section: sec, expected: `flags within ${hex(RAM_FLAGS_KNOWN)}`, found: hex(flags) });
    }
    if (flags & RamFlag.HOOK) {
      throw ctx.error('ESTREAM_UNSUPPORTED', 'RAM_SAVE_FLAG_HOOK record: RDMA-only, never valid in a stream file', { offset: at, section: sec, found: hex(flags) });
    }
    // QEMU dispatches on flags without CONTINUE (ram_load_precopy).
    const kind = flags & ~RamFlag.CONTINUE;
    switch (kind) {
      case RamFlag.MEM_SIZE: {
        const blocks = yield* decodeBlockList(ctx, sec, rc, address, at);
        ctx.emit({ type: 'ram-mem-size', offset: at, section: sec, flags, address, blocks });
        break;
      }
      case RamFlag.ZERO:
      case RamFlag.PAGE:
      case RamFlag.XBZRLE:
      case RamFlag.COMPRESS_PAGE: {
        const continued = (flags & RamFlag.CONTINUE) !== 0;
        let block: string;
        if (continued) {
          if (rc.lastBlock === undefined) {
            throw ctx.error('ESTREAM_FORMAT', 'RAM page with CONTINUE but no earlier block', { offset: at, section: sec });
          }
          block = rc.lastBlock;
        } else {
          yield* ctx.need(1, 'a RAM block id length', sec);
          const len = r.u8();
          yield* ctx.need(len, 'a RAM block id', sec);
          block = r.str(len);
        }
        const info = rc.blocks.get(block);
        if (!info) throw ctx.error('ESTREAM_FORMAT', 'RAM page for a block not in the MEM_SIZE list', { offset: at, section: sec, found: JSON.stringify(block) });
        if (address + rc.pageSize > info.usedLength) {
          throw ctx.error('ESTREAM_FORMAT', `RAM page offset outside block "${block}"`, { offset: at, section: sec, expected: `< ${info.usedLength}`, found: hex(address) });
        }
        rc.lastBlock = block;
        const base = { offset: at, section: sec, flags, address, block, continued };
        if (kind === RamFlag.ZERO) {
          yield* ctx.need(1, 'a ZERO page fill byte', sec);
          ctx.emit({ type: 'ram-zero', ...base, fill: r.u8() });
        } else if (kind === RamFlag.PAGE) {
          yield* ctx.need(rc.pageSize, 'a RAM page', sec);
          ctx.emit({ type: 'ram-page', ...base, data: r.take(rc.pageSize) });
        } else if (kind === RamFlag.XBZRLE) {
          yield* ctx.need(3, 'an XBZRLE header', sec);
          const enc = r.u8();
          if (enc !== XBZRLE_ENCODING_FLAG) {
            throw ctx.error('ESTREAM_FORMAT', 'bad XBZRLE encoding byte', { section: sec, offset: r.offset - 1, expected: hex(XBZRLE_ENCODING_FLAG), found: hex(enc) });
          }
          // ram.c load_xbzrle: "Failed to load XBZRLE page - len overflow" above TARGET_PAGE_SIZE.
          const len = ctx.length(r.be16(), rc.pageSize, 'XBZRLE length', sec, r.offset - 2);
          yield* ctx.need(len, 'an XBZRLE delta', sec);
          ctx.emit({ type: 'ram-xbzrle', ...base, data: r.take(len) });
        } else {
          yield* ctx.need(4, 'a COMPRESS_PAGE length', sec);
          const len = ctx.length(r.be32(), compressBound(rc.pageSize), 'COMPRESS_PAGE length', sec, r.offset - 4);
          yield* ctx.need(len, 'a compressed page', sec);
          ctx.emit({ type: 'ram-compressed', ...base, data: r.take(len) });
        }
        break;
      }
      case RamFlag.MULTIFD_FLUSH:
        ctx.emit({ type: 'ram-multifd-flush', offset: at, section: sec, flags, address });
        break;
      case RamFlag.EOS:
        ctx.emit({ type: 'ram-eos', offset: at, section: sec, flags, address });
        return;
      default:
        throw ctx.error('ESTREAM_FORMAT', 'unknown combination of RAM flags', { offset: at, section: sec, found: hex(flags) });
    }
  }
}

/** MEM_SIZE body: blocks until their used lengths add up to the total (§6.2). */
function* decodeBlockList(ctx: DecodeContext, sec: SectionRef, rc: RamContext, total: number, at: number): Step<RamBlockInfo[]> {
  const r = ctx.r;
  const blocks: RamBlockInfo[] = [];
  let sum = 0;
  while (sum < total) {
    if (blocks.length >= ctx.limits.maxRamBlocks) {
      throw ctx.error('ESTREAM_LIMIT', 'too many RAM blocks in MEM_SIZE', { offset: r.offset, section: sec, expected: `<= ${ctx.limits.maxRamBlocks}` });
    }
    yield* ctx.need(1, 'a RAM block id length', sec);
    const len = r.u8();
    yield* ctx.need(len + 8, 'a MEM_SIZE block entry', sec);
    const name = r.str(len);
    const lenAt = r.offset;
    const used = r.be64();
    if (used > BigInt(total - sum)) {
      throw ctx.error('ESTREAM_FORMAT', `RAM block "${name}" larger than the MEM_SIZE total left`, { offset: lenAt, section: sec, expected: `<= ${total - sum}`, found: String(used) });
    }
    const info: RamBlockInfo = { name, usedLength: Number(used) };
    if (yield* hasPostcopyPageSize(ctx, sec, rc, name)) {
      yield* ctx.need(8, 'a RAM block page size', sec);
      info.pageSize = Number(r.be64());
    }
    if (rc.ignoreShared) {
      yield* ctx.need(8, 'a RAM block GPA (x-ignore-shared)', sec);
      info.gpa = r.be64();
    }
    if (used === 0n) throw ctx.error('ESTREAM_FORMAT', `RAM block "${name}" has zero length`, { offset: lenAt, section: sec });
    if (rc.mappedRam) info.mappedRam = yield* decodeMappedRamHeader(ctx, sec, rc, info);
    sum += info.usedLength;
    blocks.push(info);
    rc.blocks.set(name, info);
  }
  return blocks;
}

/**
 * Whether a postcopy page-size field follows a block's used_length (§6.2). It is
 * there only for blocks whose page size differs from the host's. The advise's
 * page summary says if any block differs; if some may, the field is recognised by
 * its value: a power of two in (page size, 1 TiB], which neither a following
 * block id (length byte >= 1 makes the be64 >= 2^56) nor a record word (a flag
 * bit below the page size is always set) can be. With x-ignore-shared a GPA
 * follows instead and that test would be a guess, so the caller must say.
 */
function* hasPostcopyPageSize(ctx: DecodeContext, sec: SectionRef, rc: RamContext, name: string): Step<boolean> {
  if (!rc.postcopy) return false;
  const known = rc.blockPageSizes?.get(name);
  if (known !== undefined) return known !== rc.pageSize;
  const summary = rc.postcopy.pageSummary;
  if (summary === BigInt(rc.pageSize)) return false;
  if (rc.ignoreShared) {
    throw ctx.error('ESTREAM_CANNOT_DELIMIT', `postcopy + x-ignore-shared: cannot tell if RAM block "${name}" carries a page size; pass blockPageSizes`, { section: sec });
  }
  yield* ctx.need(8, 'a RAM block page size or next entry', sec);
  const v = ctx.r.peekBe64();
  return isPow2(v) && v > BigInt(rc.pageSize) && v <= 1n << 40n;
}


/**
 * The mapped-ram header after a MEM_SIZE entry (§6.7), then the block's bitmap and page area,
 * which sit in the file between this header and the next entry: skipped here without being
 * held (mapped-ram.ts reads them by offset). Offsets are checked to lie ahead, in order.
 */
function* decodeMappedRamHeader(ctx: DecodeContext, sec: SectionRef, rc: RamContext, info: RamBlockInfo): Step<MappedRamHeader> {
  const r = ctx.r;
  const at = r.offset;
  yield* ctx.need(MAPPED_RAM_HEADER_BYTES, `the mapped-ram header of RAM block "${info.name}"`, sec);
  const h: MappedRamHeader = { version: r.be32(), pageSize: r.be64(), bitmapOffset: r.be64(), pagesOffset: r.be64() };
  if (h.version > MAPPED_RAM_VERSION) {
    throw ctx.error('ESTREAM_UNSUPPORTED', `mapped-ram header version of RAM block "${info.name}"`, { offset: at, section: sec, expected: `<= ${MAPPED_RAM_VERSION}`, found: String(h.version) });
  }
  if (h.pageSize !== BigInt(rc.pageSize)) {
    throw ctx.error('ESTREAM_FORMAT', `mapped-ram page size of RAM block "${info.name}" differs from the stream's`, { offset: at + 4, section: sec, expected: String(rc.pageSize), found: String(h.pageSize) });
  }
  // x-ignore-shared blocks that stay in shared memory have neither bitmap nor pages.
  if (rc.ignoreShared && h.bitmapOffset === 0n && h.pagesOffset === 0n) return h;
  const here = BigInt(rc.fileOffset + r.offset);
  const bitmapEnd = h.bitmapOffset + BigInt(mappedRamBitmapBytes(info.usedLength, rc.pageSize));
  if (h.bitmapOffset < here || bitmapEnd > h.pagesOffset) {
    throw ctx.error('ESTREAM_FORMAT', `mapped-ram bitmap offset of RAM block "${info.name}" outside the area after its header`, { offset: at + 12, section: sec, expected: `${here} <= offset, bitmap end <= pages offset ${h.pagesOffset}`, found: String(h.bitmapOffset) });
  }
  const next = h.pagesOffset + BigInt(info.usedLength);
  if (next > BigInt(Number.MAX_SAFE_INTEGER)) throw ctx.error('ESTREAM_LIMIT', 'mapped-ram pages offset beyond 2^53', { offset: at + 20, section: sec, found: String(h.pagesOffset) });
  yield* ctx.skip(Number(next - here), `the mapped-ram bitmap and pages of RAM block "${info.name}" (file offsets ${h.bitmapOffset} to ${next})`, sec);
  return h;
}

/** Bytes of a mapped-ram block bitmap: one bit per page, in whole 64-bit words (§6.7). */
export function mappedRamBitmapBytes(usedLength: number, pageSize: number): number {
  return Math.ceil(usedLength / pageSize / 64) * 8;
}
