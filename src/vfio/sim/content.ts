// The simulated device's state content and its migration stream format. Pure functions,
// shared by the device (main thread) and its producer/consumer worker.
//
// State: `size` bytes cut into 64 KiB blocks; block b at generation g holds a xorshift32
// stream seeded from (seed, b, g), so content is deterministic from the seed and a
// "dirtied" block (g+1) has new content. Plus a small register file (region 0) that
// travels in the stream, as mtty's UART registers do.
//
// Stream (all little-endian):
//   header  64 B: magic "MIGBSIM1", version u32 @8, header size u32 @12, seed u64 @16,
//                 size u64 @24, block size u32 @32, regs size u32 @36, flags u32 @40, zero to 64
//   records 16 B header: tag u32 @0, index u32 @4, gen u32 @8, length u32 @12, then payload
//     BLOK: payload = content of block `index` at generation `gen` (may repeat: last wins)
//     REGS: payload = register file snapshot (taken at the arc into STOP_COPY)
//     END!: payload 16 B = state digest u64 @0, block count u32 @8, zero u32 @12; last record
// Every BLOK payload is checked word for word on resume, and the END digest (over seed,
// size, final generations and registers) proves the device got the whole final state.
import { MigbridgeError } from '../../errors.js';

export const BLOCK_SIZE = 64 * 1024;
export const REGS_SIZE = 256;
export const HEADER_SIZE = 64;
export const RECORD_HEADER_SIZE = 16;
export const END_PAYLOAD_SIZE = 16;
export const STREAM_VERSION = 1;
export const MAGIC = Buffer.from('MIGBSIM1', 'latin1');

export const Tag = {
  BLOK: 0x4b4f4c42, // "BLOK"
  REGS: 0x53474552, // "REGS"
  END: 0x21444e45, // "END!"
} as const;

/** gens[] value of a block never queued in the current session. */
export const NOT_SENT = 0xffffffff;

export function blockCount(size: number): number {
  return Math.ceil(size / BLOCK_SIZE);
}
export function blockLength(size: number, b: number): number {
  return Math.min(BLOCK_SIZE, size - b * BLOCK_SIZE);
}
export function blockRecordBytes(size: number, b: number): number {
  return RECORD_HEADER_SIZE + blockLength(size, b);
}
export const REGS_RECORD_BYTES = RECORD_HEADER_SIZE + REGS_SIZE;
export const END_RECORD_BYTES = RECORD_HEADER_SIZE + END_PAYLOAD_SIZE;

/** Bytes of a complete stream without precopy: header, every block once, registers, end. */
export function fullStreamBytes(size: number): number {
  return HEADER_SIZE + blockCount(size) * RECORD_HEADER_SIZE + size + REGS_RECORD_BYTES + END_RECORD_BYTES;
}

function mix32(x: number): number {
  // murmur3 fmix32: spreads (seed, block, gen) into an xorshift start state.
  x ^= x >>> 16;
  x = Math.imul(x, 0x85ebca6b);
  x ^= x >>> 13;
  x = Math.imul(x, 0xc2b2ae35);
  x ^= x >>> 16;
  return x >>> 0;
}

/** Non-zero xorshift32 start state for block b at generation g. */
export function blockSeed(seed: bigint, b: number, g: number): number {
  const lo = Number(seed & 0xffffffffn);
  const hi = Number((seed >> 32n) & 0xffffffffn);
  let s = mix32(lo ^ mix32(hi ^ 0x9e3779b9));
  s = mix32(s ^ Math.imul(b + 1, 0x27d4eb2f));
  s = mix32(s ^ Math.imul(g + 1, 0x165667b1));
  return s === 0 ? 0x6d2b79f5 : s;
}

/**
 * Fills out[0..len) with block content: four interleaved xorshift32 lanes (word i comes
 * from lane i % 4), stored as little-endian 32-bit words; the trailing len % 4 bytes are
 * the low bytes of the next word. Four independent lanes let the CPU overlap the
 * dependency chains (about 3.5 GB/s here, against 2 GB/s for one lane).
 */
export function fillBlock(out: Buffer, seed: bigint, b: number, g: number, len: number): void {
  const s = blockSeed(seed, b, g);
  let l0 = s | 0;
  let l1 = mix32(s ^ 0x1b873593) | 1;
  let l2 = mix32(s ^ 0xcc9e2d51) | 1;
  let l3 = mix32(s ^ 0xe6546b64) | 1;
  const words = len >>> 2;
  const aligned = (out.byteOffset & 3) === 0;
  const w = aligned ? new Int32Array(out.buffer, out.byteOffset, words) : new Int32Array(words);
  let i = 0;
  for (; i + 4 <= words; i += 4) {
    l0 ^= l0 << 13; l0 ^= l0 >>> 17; l0 ^= l0 << 5;
    l1 ^= l1 << 13; l1 ^= l1 >>> 17; l1 ^= l1 << 5;
    l2 ^= l2 << 13; l2 ^= l2 >>> 17; l2 ^= l2 << 5;
    l3 ^= l3 << 13; l3 ^= l3 >>> 17; l3 ^= l3 << 5;
    w[i] = l0;
    w[i + 1] = l1;
    w[i + 2] = l2;
    w[i + 3] = l3;
  }
  const lanes = [l0, l1, l2, l3];
  const next = (k: number): number => {
    let x = lanes[k]!;
    x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
    lanes[k] = x;
    return x;
  };
  for (; i < words; i++) w[i] = next(i & 3);
  if (!aligned) Buffer.from(w.buffer, 0, words * 4).copy(out, 0);
  const rest = len & 3;
  if (rest) {
    const x = next(words & 3);
    for (let k = 0; k < rest; k++) out[words * 4 + k] = (x >>> (8 * k)) & 0xff;
  }
}

/** 64-bit digest of the whole device state: seed, size, every block's generation, registers. */
export function stateDigest(seed: bigint, size: number, gens: Uint32Array, regs: Uint8Array): bigint {
  // Two independent 32-bit multiply-xor lanes; fast and order-sensitive.
  let a = 0x811c9dc5;
  let c = 0x01000193;
  const feed = (v: number): void => {
    a = Math.imul(a ^ v, 0x01000193) >>> 0;
    c = mix32((c + v + 0x9e3779b9) >>> 0);
  };
  feed(Number(seed & 0xffffffffn));
  feed(Number((seed >> 32n) & 0xffffffffn));
  feed(size >>> 0);
  feed(Math.floor(size / 0x100000000));
  for (let i = 0; i < gens.length; i++) feed(gens[i]!);
  for (let i = 0; i < regs.length; i++) feed(regs[i]!);
  return (BigInt(a >>> 0) << 32n) | BigInt(c >>> 0);
}

export interface StreamHeader {
  version: number;
  seed: bigint;
  size: number;
  blockSize: number;
  regsSize: number;
  flags: number;
}

export function encodeHeader(h: { seed: bigint; size: number; flags: number }): Buffer {
  const b = Buffer.alloc(HEADER_SIZE);
  MAGIC.copy(b, 0);
  b.writeUInt32LE(STREAM_VERSION, 8);
  b.writeUInt32LE(HEADER_SIZE, 12);
  b.writeBigUInt64LE(h.seed, 16);
  b.writeBigUInt64LE(BigInt(h.size), 24);
  b.writeUInt32LE(BLOCK_SIZE, 32);
  b.writeUInt32LE(REGS_SIZE, 36);
  b.writeUInt32LE(h.flags >>> 0, 40);
  return b;
}

/** Throws an Error naming the bad field (the consumer turns it into a corrupt-stream verdict). */
export function decodeHeader(b: Buffer): StreamHeader {
  if (b.length < HEADER_SIZE) throw new MigbridgeError('ESIM_FORMAT', `sim state header: ${b.length} bytes, need ${HEADER_SIZE}`);
  if (!b.subarray(0, 8).equals(MAGIC)) throw new MigbridgeError('ESIM_FORMAT', `sim state header: bad magic ${b.subarray(0, 8).toString('hex')} at offset 0`);
  const version = b.readUInt32LE(8);
  if (version !== STREAM_VERSION) throw new MigbridgeError('ESIM_FORMAT', `sim state header: unsupported version ${version} at offset 8`);
  if (b.readUInt32LE(12) !== HEADER_SIZE) throw new MigbridgeError('ESIM_FORMAT', `sim state header: header size ${b.readUInt32LE(12)} at offset 12`);
  const size = b.readBigUInt64LE(24);
  if (size > BigInt(Number.MAX_SAFE_INTEGER)) throw new MigbridgeError('ESIM_FORMAT', `sim state header: size ${size} at offset 24 too large`);
  const blockSize = b.readUInt32LE(32);
  if (blockSize !== BLOCK_SIZE) throw new MigbridgeError('ESIM_FORMAT', `sim state header: block size ${blockSize} at offset 32 (expected ${BLOCK_SIZE})`);
  const regsSize = b.readUInt32LE(36);
  if (regsSize !== REGS_SIZE) throw new MigbridgeError('ESIM_FORMAT', `sim state header: regs size ${regsSize} at offset 36 (expected ${REGS_SIZE})`);
  for (let i = 44; i < HEADER_SIZE; i++) if (b[i] !== 0) throw new MigbridgeError('ESIM_FORMAT', `sim state header: reserved byte at offset ${i} is not zero`);
  return { version, seed: b.readBigUInt64LE(16), size: Number(size), blockSize, regsSize, flags: b.readUInt32LE(40) };
}

export function encodeRecordHeader(out: Buffer, at: number, tag: number, index: number, gen: number, length: number): void {
  out.writeUInt32LE(tag >>> 0, at);
  out.writeUInt32LE(index >>> 0, at + 4);
  out.writeUInt32LE(gen >>> 0, at + 8);
  out.writeUInt32LE(length >>> 0, at + 12);
}

export function encodeRegsRecord(regs: Uint8Array): Buffer {
  const b = Buffer.alloc(REGS_RECORD_BYTES);
  encodeRecordHeader(b, 0, Tag.REGS, 0, 0, REGS_SIZE);
  Buffer.from(regs.buffer, regs.byteOffset, regs.length).copy(b, RECORD_HEADER_SIZE);
  return b;
}

export function encodeEndRecord(digest: bigint, blocks: number): Buffer {
  const b = Buffer.alloc(END_RECORD_BYTES);
  encodeRecordHeader(b, 0, Tag.END, 0, 0, END_PAYLOAD_SIZE);
  b.writeBigUInt64LE(digest, RECORD_HEADER_SIZE);
  b.writeUInt32LE(blocks >>> 0, RECORD_HEADER_SIZE + 8);
  return b;
}
