// Hostile variants of a valid stream, aimed by its layout (test/fuzz/layout.ts): truncation
// at record boundaries and anywhere, bit flips, integer fields set to the values that break
// length arithmetic, section ids and idstrs changed, records reordered, the vmdesc JSON
// corrupted. Deterministic for a given Rng state, so a seed replays a run.
import type { Field, StreamLayout } from './layout.js';

/** xorshift128+: small, fast, and the same sequence everywhere for a seed. */
export class Rng {
  #s0: bigint;
  #s1: bigint;
  constructor(seed: bigint) {
    const M = (1n << 64n) - 1n;
    // splitmix64 spreads any seed (0 included) over both state words.
    const mix = (x: bigint) => {
      x = (x + 0x9e3779b97f4a7c15n) & M;
      x = ((x ^ (x >> 30n)) * 0xbf58476d1ce4e5b9n) & M;
      x = ((x ^ (x >> 27n)) * 0x94d049bb133111ebn) & M;
      return x ^ (x >> 31n);
    };
    this.#s0 = mix(seed);
    this.#s1 = mix(this.#s0);
  }
  /** Uniform in [0, n). */
  below(n: number): number {
    const M = (1n << 64n) - 1n;
    let s1 = this.#s0;
    const s0 = this.#s1;
    this.#s0 = s0;
    s1 = (s1 ^ (s1 << 23n)) & M;
    this.#s1 = s1 ^ s0 ^ (s1 >> 17n) ^ (s0 >> 26n);
    const r = (this.#s1 + s0) & M;
    return Number(r % BigInt(Math.max(1, n)));
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.below(xs.length)]!;
  }
  chance(p: number): boolean {
    return this.below(1_000_000) < p * 1_000_000;
  }
}

/** The values that break length arithmetic, cut to the field's width. */
export function hostileValues(width: Field['width']): bigint[] {
  const bits = BigInt(width * 8);
  const max = (1n << bits) - 1n;
  const wanted = [0n, 1n, 2n ** 31n, 2n ** 63n, 2n ** 64n - 1n, 2n ** 32n - 1n, 2n ** 53n + 1n, max >> 1n, 1n << (bits - 1n)];
  return [...new Set(wanted.map((v) => v & max))];
}

export function writeBE(buf: Buffer, f: Field, value: bigint): void {
  if (f.offset + f.width > buf.length) return;
  for (let i = f.width - 1, v = value; i >= 0; i--, v >>= 8n) buf[f.offset + i] = Number(v & 0xffn);
}

export interface Mutant {
  readonly bytes: Buffer;
  /** What was done, for the finding's report and the regression file's name. */
  readonly how: string;
}

const SPLICE_LIMIT = 1 << 16;

/** `record`'s span: from its boundary to the next one (or the end). */
function recordSpan(layout: StreamLayout, i: number): [number, number] {
  return [layout.records[i]!, layout.records[i + 1] ?? layout.size];
}

type Mutator = (b: Buffer, l: StreamLayout, r: Rng) => Mutant | null;

const MUTATORS: Record<string, Mutator> = {
  truncateAtRecord: (b, l, r) => {
    const at = r.pick([...l.records, ...l.items]);
    return { bytes: b.subarray(0, at), how: `truncated at boundary ${at}` };
  },
  truncateAnywhere: (b, _l, r) => {
    const at = r.below(b.length);
    return { bytes: b.subarray(0, at), how: `truncated at ${at}` };
  },
  bitFlips: (b, l, r) => {
    const out = Buffer.from(b);
    const n = 1 + r.below(8);
    const at: number[] = [];
    for (let i = 0; i < n; i++) {
      // Half the flips land in the first bytes of a record or item, where the framing is.
      const base = r.chance(0.5) && l.records.length ? r.pick([...l.records, ...l.items]) + r.below(24) : r.below(out.length);
      if (base >= out.length) continue;
      out[base] ^= 1 << r.below(8);
      at.push(base);
    }
    return { bytes: out, how: `bit flips at ${at.join(',')}` };
  },
  hostileField: (b, l, r) => {
    if (!l.fields.length) return null;
    const f = r.pick(l.fields);
    const v = r.pick(hostileValues(f.width));
    const out = Buffer.from(b);
    writeBE(out, f, v);
    return { bytes: out, how: `${f.what} at ${f.offset} set to ${v}` };
  },
  sectionId: (b, l, r) => {
    if (!l.sectionIds.length) return null;
    const f = r.pick(l.sectionIds);
    const other = r.pick(l.sectionIds);
    const v = r.pick([BigInt(b.readUInt32BE(other.offset)), BigInt(b.readUInt32BE(f.offset)) + 1n, 0n, 0xffffffffn, BigInt(r.below(64))]);
    const out = Buffer.from(b);
    writeBE(out, { ...f, width: 4 }, v);
    return { bytes: out, how: `${f.what} at ${f.offset} set to ${v}` };
  },
  idstr: (b, l, r) => {
    if (!l.idstrs.length) return null;
    const s = r.pick(l.idstrs);
    const end = s.offset + 1 + s.name.length;
    const choices = [
      r.pick(l.idstrs).name,
      s.name.slice(0, -1),
      s.name + 'x',
      '',
      'x'.repeat(255),
      s.name.replace(/.$/, (c) => String.fromCharCode(c.charCodeAt(0) ^ 1)),
      '../../etc/passwd',
      '\u0000\u00ff/.',
    ];
    const name = Buffer.from(r.pick(choices), 'latin1').subarray(0, 255);
    const out = Buffer.concat([b.subarray(0, s.offset), Buffer.from([name.length]), name, b.subarray(end)]);
    return { bytes: out, how: `idstr "${s.name}" at ${s.offset} replaced by ${JSON.stringify(name.toString('latin1'))}` };
  },
  reorder: (b, l, r) => {
    if (l.records.length < 3) return null;
    const i = 1 + r.below(l.records.length - 1);
    const j = 1 + r.below(l.records.length - 1);
    const [a0, a1] = recordSpan(l, Math.min(i, j));
    const [b0, b1] = recordSpan(l, Math.max(i, j));
    const op = r.below(3);
    if (op === 0 && i !== j) {
      const out = Buffer.concat([b.subarray(0, a0), b.subarray(b0, b1), b.subarray(a1, b0), b.subarray(a0, a1), b.subarray(b1)]);
      return { bytes: out, how: `records at ${a0} and ${b0} swapped` };
    }
    if (op === 1) return { bytes: Buffer.concat([b.subarray(0, a0), b.subarray(a1)]), how: `record at ${a0} removed` };
    if (a1 - a0 > SPLICE_LIMIT) return null;
    return { bytes: Buffer.concat([b.subarray(0, b1), b.subarray(a0, a1), b.subarray(b1)]), how: `record at ${a0} repeated after ${b0}` };
  },
  vmdesc: (b, l, r) => {
    const v = l.vmdesc;
    if (!v) return null;
    const text = b.subarray(v.jsonAt, v.jsonAt + v.length).toString('utf8');
    let json: string;
    let how: string;
    const op = r.below(4);
    if (op === 0) {
      const cut = r.below(text.length);
      json = text.slice(0, cut);
      how = `vmdesc JSON cut at ${cut}`;
    } else if (op === 1) {
      const at = r.below(text.length);
      json = text.slice(0, at) + r.pick(['{', '}', '"', ',', '\\', ']', '\u0000', 'ÿ']) + text.slice(at + 1);
      how = `vmdesc JSON byte ${at} replaced`;
    } else {
      const doc = JSON.parse(text) as unknown;
      how = `vmdesc ${corruptJson(doc, r, op === 3)}`;
      json = JSON.stringify(doc);
    }
    const body = Buffer.from(json, 'utf8');
    const len = Buffer.alloc(4);
    // Mostly a consistent length (so the JSON itself is what is judged), sometimes the old one.
    len.writeUInt32BE(r.chance(0.8) ? body.length : v.length);
    const out = Buffer.concat([b.subarray(0, v.lengthAt), len, body, b.subarray(v.jsonAt + v.length)]);
    return { bytes: out, how };
  },
  splice: (b, _l, r) => {
    const from = r.below(b.length);
    const n = 1 + r.below(Math.min(SPLICE_LIMIT, b.length - from));
    const to = r.below(b.length);
    return { bytes: Buffer.concat([b.subarray(0, to), b.subarray(from, from + n), b.subarray(to)]), how: `${n} bytes from ${from} inserted at ${to}` };
  },
};

const HOSTILE_JSON: readonly unknown[] = [null, -1, 0, 1, 2 ** 31, 2 ** 53, 2 ** 64, 1e308, -0.5, '', 'x', '18446744073709551615', [], {}, true, 'A'.repeat(4096)];

/** Replaces (or deletes) one value somewhere in `doc`; says what. */
function corruptJson(doc: unknown, r: Rng, remove: boolean): string {
  const path: string[] = [];
  let node = doc;
  // Walk down a random path, stopping at a random depth or a leaf.
  for (;;) {
    if (node === null || typeof node !== 'object') break;
    const keys = Object.keys(node);
    if (!keys.length) break;
    const k = r.pick(keys);
    const child = (node as Record<string, unknown>)[k];
    if (child === null || typeof child !== 'object' || r.chance(0.25)) {
      if (remove && !Array.isArray(node)) delete (node as Record<string, unknown>)[k];
      else (node as Record<string, unknown>)[k] = r.pick(HOSTILE_JSON);
      return `${remove ? 'deleted' : 'replaced'} ${[...path, k].join('.')}`;
    }
    path.push(k);
    node = child;
  }
  return 'unchanged';
}

export const MUTATOR_NAMES = Object.keys(MUTATORS);

/**
 * Runs a mutator; after an earlier stacked mutation the layout may no longer fit the bytes
 * (a field past a cut, JSON no longer parsing): such a mutation is skipped.
 */
function aimed(m: Mutator, b: Buffer, l: StreamLayout, r: Rng): Mutant | null {
  if (b.length === 0) return null;
  try {
    return m(b, l, r);
  } catch (e) {
    if (e instanceof RangeError || e instanceof SyntaxError) return null;
    throw e;
  }
}

/** One to three stacked mutations of `bytes`; the layout describes the original (later ones aim less well). */
export function mutate(bytes: Buffer, layout: StreamLayout, r: Rng): Mutant {
  let cur: Mutant = { bytes, how: '' };
  const n = r.chance(0.7) ? 1 : 2 + r.below(2);
  const hows: string[] = [];
  for (let i = 0; i < n; i++) {
    const m = aimed(MUTATORS[r.pick(MUTATOR_NAMES)]!, cur.bytes, layout, r);
    if (!m) continue;
    cur = m;
    hows.push(m.how);
  }
  if (!hows.length) return mutate(bytes, layout, r);
  return { bytes: cur.bytes, how: hows.join('; ') };
}
