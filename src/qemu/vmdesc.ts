// The VMDESCRIPTION JSON trailer (§5): its shape, validation, how many stream
// bytes a FULL section described by it takes, and finding it at the tail of a
// seekable file (it comes after EOF, but FULL sections before it need it).
import { open } from 'node:fs/promises';
import { RecordType } from './constants.js';
import { StreamError, type StreamErrorCode } from './errors.js';

export interface VmDescField {
  name: string;
  type: string;
  /** Bytes the field (one element, when array_len is set) took in the stream. */
  size: number;
  array_len?: number;
  index?: number;
  struct?: VmDescStruct;
}

export interface VmDescStruct {
  vmsd_name?: string;
  version?: number;
  fields?: VmDescField[];
  subsections?: VmDescStruct[];
}

/** One FULL section: a vmsd (vmsd_name, version) or an old-style blob (size). */
export interface VmDescDevice extends VmDescStruct {
  name: string;
  instance_id: number;
  size?: number;
}

export interface VmDesc {
  page_size?: number;
  configuration?: VmDescStruct;
  devices: VmDescDevice[];
}

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function checkCount(v: unknown, what: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
    throw new StreamError('ESTREAM_FORMAT', `vmdesc: ${what} is not a non-negative integer`, { found: JSON.stringify(v) });
  }
  return v;
}

function checkStruct(s: unknown, where: string): VmDescStruct {
  if (!isObj(s)) throw new StreamError('ESTREAM_FORMAT', `vmdesc: ${where} is not an object`);
  if (s.fields !== undefined) {
    if (!Array.isArray(s.fields)) throw new StreamError('ESTREAM_FORMAT', `vmdesc: ${where}.fields is not an array`);
    s.fields.forEach((f: unknown, i) => {
      if (!isObj(f) || typeof f.name !== 'string' || typeof f.type !== 'string') {
        throw new StreamError('ESTREAM_FORMAT', `vmdesc: ${where}.fields[${i}] lacks name/type`);
      }
      checkCount(f.size, `${where}.${f.name}.size`);
      if (f.array_len !== undefined) checkCount(f.array_len, `${where}.${f.name}.array_len`);
      if (f.struct !== undefined) checkStruct(f.struct, `${where}.${f.name}.struct`);
    });
  }
  if (s.subsections !== undefined) {
    if (!Array.isArray(s.subsections)) throw new StreamError('ESTREAM_FORMAT', `vmdesc: ${where}.subsections is not an array`);
    s.subsections.forEach((sub: unknown, i) => {
      const st = checkStruct(sub, `${where}.subsections[${i}]`);
      if (typeof st.vmsd_name !== 'string') throw new StreamError('ESTREAM_FORMAT', `vmdesc: ${where}.subsections[${i}] lacks vmsd_name`);
      checkCount(st.version, `${where}.subsections[${i}].version`);
    });
  }
  return s as VmDescStruct;
}

/** Parses and validates the JSON text of a vmdesc trailer (`offset`: where its JSON starts, for errors). */
export function parseVmDesc(json: Buffer | string, offset?: number): VmDesc {
  try {
    return validateVmDesc(json);
  } catch (e) {
    if (offset === undefined || !(e instanceof StreamError) || e.offset !== undefined) throw e;
    throw new StreamError(e.code as StreamErrorCode, e.message, { offset, cause: e.cause });
  }
}

function validateVmDesc(json: Buffer | string): VmDesc {
  let v: unknown;
  try {
    v = JSON.parse(typeof json === 'string' ? json : json.toString('utf8'));
  } catch (e) {
    throw new StreamError('ESTREAM_FORMAT', 'vmdesc is not valid JSON', { cause: e });
  }
  if (!isObj(v) || !Array.isArray(v.devices)) {
    throw new StreamError('ESTREAM_FORMAT', 'vmdesc has no "devices" array');
  }
  if (v.page_size !== undefined) checkCount(v.page_size, 'page_size');
  if (v.configuration !== undefined) checkStruct(v.configuration, 'configuration');
  v.devices.forEach((d: unknown, i) => {
    if (!isObj(d) || typeof d.name !== 'string') throw new StreamError('ESTREAM_FORMAT', `vmdesc: devices[${i}] lacks a name`);
    checkCount(d.instance_id, `devices[${i}].instance_id`);
    if (d.size !== undefined) checkCount(d.size, `devices[${i}].size`);
    checkStruct(d, `devices[${i}] (${d.name})`);
  });
  return v as unknown as VmDesc;
}

/** Bytes of a struct's fields (nested structs include their own subsections, §5). */
export function fieldsBytes(s: VmDescStruct): number {
  let n = 0;
  for (const f of s.fields ?? []) n += f.size * (f.array_len ?? 1);
  return n;
}

/** Bytes of a subsection header: 0x05, string8 name, be32 version (§7). */
export function subsectionHeaderBytes(name: string): number {
  return 1 + 1 + Buffer.byteLength(name, 'latin1') + 4;
}

/** Total stream bytes of a top-level FULL body: fields, then each subsection (header + body). */
export function bodyBytes(s: VmDescStruct): number {
  let n = fieldsBytes(s);
  for (const sub of s.subsections ?? []) n += subsectionHeaderBytes(sub.vmsd_name ?? '') + bodyBytes(sub);
  return n;
}

export function deviceKey(name: string, instanceId: number): string {
  return `${name}\u0000${instanceId}`;
}

/** FULL-section descriptions per (idstr, instance), in stream order. */
export class VmDescIndex {
  private queues = new Map<string, VmDescDevice[]>();
  constructor(readonly desc: VmDesc) {
    for (const d of desc.devices) {
      const k = deviceKey(d.name, d.instance_id);
      const q = this.queues.get(k);
      if (q) q.push(d);
      else this.queues.set(k, [d]);
    }
  }
  /** The next description for this (idstr, instance), consumed in stream order. */
  take(name: string, instanceId: number): VmDescDevice | undefined {
    return this.queues.get(deviceKey(name, instanceId))?.shift();
  }
}

export interface TailVmDesc {
  /** Offset of the 0x06 byte. */
  offset: number;
  json: Buffer;
  desc: VmDesc;
}

/**
 * Finds the vmdesc trailer at the end of a seekable file: the last `0x06 be32 len`
 * whose JSON ends exactly at end of file and is preceded by the EOF byte (§5).
 * Looks at most `maxBytes` back from the end; returns undefined when there is none.
 * The tail is scanned backwards one block at a time and only a candidate's JSON is read
 * whole, so a stream without a vmdesc does not cost a buffer of `maxBytes` (a restore's
 * memory budget is 64 MiB).
 */
export async function readTailVmDesc(path: string, maxBytes = 64 << 20): Promise<TailVmDesc | undefined> {
  const fh = await open(path, 'r');
  try {
    const size = (await fh.stat()).size;
    const base = size - Math.min(size, maxBytes);
    const block = Buffer.allocUnsafe(TAIL_BLOCK + TRAILER_HEAD + 1);
    // candidate offsets p in [start, end); the last possible one is size - 6
    for (let end = size - TRAILER_HEAD; end > base; ) {
      const start = Math.max(base, end - TAIL_BLOCK);
      const from = start > base ? start - 1 : start; // with the byte before the first candidate
      const want = end + TRAILER_HEAD - from;
      if ((await fh.read(block, 0, want, from)).bytesRead !== want) return undefined;
      for (let p = end - 1; p >= start; p--) {
        if (!trailerAt(block, p - from, size - p, p, base)) continue;
        const json = Buffer.allocUnsafe(size - p - TRAILER_HEAD);
        if ((await fh.read(json, 0, json.length, p + TRAILER_HEAD)).bytesRead !== json.length) return undefined;
        return parsedTrailer(json, p);
      }
      end = start;
    }
    return undefined;
  } finally {
    await fh.close();
  }
}

const TAIL_BLOCK = 1 << 20;
/** 0x06 + be32 length: the JSON follows. */
const TRAILER_HEAD = 5;

/**
 * Whether buf[i] (stream offset `at`, `toEnd` bytes before the end of the stream, the
 * window starting at stream offset `base`) starts a vmdesc trailer: type byte, a length
 * that reaches exactly the end, a JSON object, and the EOF byte before it (unless the
 * stream is nothing else; at the window's first byte that byte is not known).
 */
function trailerAt(buf: Buffer, i: number, toEnd: number, at: number, base: number): boolean {
  if (buf[i] !== RecordType.VMDESCRIPTION || buf[i + TRAILER_HEAD] !== 0x7b /* '{' */) return false;
  if (buf.readUInt32BE(i + 1) !== toEnd - TRAILER_HEAD) return false;
  return at === 0 || (at > base && buf[i - 1] === RecordType.EOF);
}

function parsedTrailer(json: Buffer, offset: number): TailVmDesc | undefined {
  try {
    return { offset, json, desc: parseVmDesc(json, offset) };
  } catch {
    return undefined;
  }
}

/**
 * The vmdesc trailer in the last bytes of a stream (`tail`, which starts at stream
 * offset `base`), as readTailVmDesc looks for it; for streams that are not files
 * (e.g. decompressed on the fly).
 */
export function findTailVmDesc(tail: Buffer, base: number): TailVmDesc | undefined {
  const n = tail.length;
  for (let p = n - TRAILER_HEAD - 1; p >= 0; p--) {
    if (trailerAt(tail, p, n - p, base + p, base)) return parsedTrailer(Buffer.from(tail.subarray(p + TRAILER_HEAD)), base + p);
  }
  return undefined;
}
