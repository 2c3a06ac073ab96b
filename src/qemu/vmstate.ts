// FULL vmstate sections (§7): framed by the stream's own vmdesc entry (field
// sizes, then each listed subsection with its 0x05/name/version header checked),
// and decoded field by field for `inspect --dump state` in the shape QEMU's
// scripts/analyze-migration.py `-d state` prints.
import { RecordType } from './constants.js';
import type { DecodeContext, Step } from './context.js';
import { hex } from './errors.js';
import type { SectionRef } from './records.js';
import { Reader } from './bytes.js';
import { type VmDescDevice, type VmDescField, type VmDescStruct, bodyBytes, fieldsBytes } from './vmdesc.js';

/** Stream bytes of a FULL body per its vmdesc entry (old-style entries may have only `size`). */
export function fullBodyBytes(d: VmDescDevice): number {
  if (!d.fields && d.size !== undefined) return d.size;
  return bodyBytes(d);
}

/** Reads a FULL body framed by `desc`, checking every subsection header against it. */
export function* readVmstateBody(ctx: DecodeContext, sec: SectionRef, desc: VmDescDevice): Step<Buffer> {
  const total = ctx.length(fullBodyBytes(desc), ctx.limits.maxBufferedBytes, 'FULL section body (per vmdesc)', sec);
  const parts: Buffer[] = [];
  if (!desc.fields) {
    yield* ctx.need(total, 'an old-style section body', sec);
    return ctx.r.take(total);
  }
  yield* readStruct(ctx, sec, desc, parts);
  return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
}

function* readStruct(ctx: DecodeContext, sec: SectionRef, s: VmDescStruct, parts: Buffer[]): Step {
  const r = ctx.r;
  const n = fieldsBytes(s);
  yield* ctx.need(n, `the fields of ${s.vmsd_name ?? sec.idstr}`, sec);
  parts.push(r.take(n));
  for (const sub of s.subsections ?? []) {
    const name = sub.vmsd_name ?? '';
    const at = r.offset;
    const hdr = 1 + 1 + Buffer.byteLength(name, 'latin1') + 4;
    yield* ctx.need(hdr, `subsection ${name}`, sec);
    const h = r.peek(hdr);
    const expected = Buffer.alloc(hdr);
    expected[0] = RecordType.SUBSECTION;
    expected[1] = hdr - 6;
    expected.write(name, 2, 'latin1');
    expected.writeUInt32BE(sub.version ?? 0, hdr - 4);
    if (!h.equals(expected)) {
      throw ctx.error('ESTREAM_FORMAT', 'subsection header does not match the vmdesc', {
        offset: at,
        section: sec,
        expected: `${hex(RecordType.SUBSECTION)} "${name}" v${sub.version}`,
        found: h.toString('hex'),
      });
    }
    parts.push(r.take(hdr));
    yield* readStruct(ctx, sec, sub, parts);
  }
}

// ---- decoding for --dump state (analyze-migration.py's VMSDField* classes) ----

export type DumpValue = string | boolean | number | DumpValue[] | { [k: string]: DumpValue };

const INT_TYPES = new Set(['int8', 'int16', 'int32', 'int64', 'int32 equal', 'int32 le', 'int64 equal', 'uint8 equal', 'uint16 equal']);
const UINT_TYPES = new Set(['uint8', 'uint16', 'uint32', 'uint32 equal', 'uint64']);

function hexBytes(b: Buffer): string {
  return Array.from(b, (c) => c.toString(16).padStart(2, '0')).join(' ');
}

/** "0x%0{2*size}x", with " (-n)" for negative signed values, as analyze-migration.py prints ints. */
function intText(b: Buffer, signed: boolean): string {
  let u = 0n;
  for (const c of b) u = (u << 8n) | BigInt(c);
  const text = '0x' + u.toString(16).padStart(b.length * 2, '0');
  if (signed && b.length > 0 && (b[0]! & 0x80) !== 0) {
    const s = u - (1n << BigInt(8 * b.length));
    return `${text} (${s})`;
  }
  return text;
}

function decodeField(f: VmDescField, r: Reader): DumpValue {
  if (f.type === 'struct' && f.struct) {
    const bytes = r.take(f.size);
    try {
      const sr = Reader.of(bytes);
      const v = decodeStruct(f.struct, sr);
      if (sr.available === 0) return v;
    } catch {
      // Layout not derivable from the vmdesc (e.g. variable elements): fall back to bytes.
    }
    return hexBytes(bytes);
  }
  const bytes = r.take(f.size);
  if (f.type === 'bool') return bytes[0] !== 0;
  if (f.size <= 8 && INT_TYPES.has(f.type)) return intText(bytes, true);
  if (f.size <= 8 && UINT_TYPES.has(f.type)) return intText(bytes, false);
  if (f.type === 'nullptr') return 'nullptr';
  return hexBytes(bytes);
}

/** Decodes one struct (fields then subsections) from `r`; throws if the bytes run out. */
export function decodeStruct(s: VmDescStruct, r: Reader): { [k: string]: DumpValue } {
  const out: { [k: string]: DumpValue } = {};
  // Like analyze-migration.py: a repeated name (array elements) turns into a list.
  const put = (name: string, v: DumpValue): void => {
    const cur = out[name];
    if (cur === undefined) out[name] = v;
    else if (Array.isArray(cur)) cur.push(v);
    else out[name] = [cur, v];
  };
  for (const f of s.fields ?? []) {
    const n = f.array_len ?? 1;
    for (let i = 0; i < n; i++) put(f.name, decodeField(f, r));
  }
  for (const sub of s.subsections ?? []) {
    r.skip(1);
    const name = r.str(r.u8());
    r.skip(4);
    out[name] = decodeStruct(sub, r);
  }
  return out;
}

/** Decoded fields of a FULL body (the bytes the decoder framed with the same `desc`). */
export function decodeVmstate(desc: VmDescDevice, body: Buffer): { [k: string]: DumpValue } {
  if (!desc.fields) return { data: hexBytes(body) };
  return decodeStruct(desc, Reader.of(body));
}
