// Where the fields of a valid stream are, found by decoding it with our own codec: record
// boundaries, the integer fields a mutator may set to hostile values, the idstrs of full
// section headers and the vmdesc trailer. Offsets come from the decoder's events, whose
// `offset` is the first byte of the record or body item they describe.
import { readStreamFile } from '../../src/qemu/index.js';
import { MultifdDecoder } from '../../src/qemu/multifd.js';

/** An integer field in the stream: big-endian, `width` bytes at `offset`. */
export interface Field {
  readonly offset: number;
  readonly width: 1 | 2 | 4 | 8;
  readonly what: string;
}

export interface Idstr {
  /** Offset of the length byte; the name follows it. */
  readonly offset: number;
  readonly name: string;
}

export interface StreamLayout {
  readonly size: number;
  /** Offsets where a top-level record starts (header, configuration, sections, footers, commands, EOF, vmdesc). */
  readonly records: readonly number[];
  /** Offsets where a body item starts (RAM records, VFIO markers and DATA_STATE headers...), all events less the above. */
  readonly items: readonly number[];
  readonly fields: readonly Field[];
  readonly sectionIds: readonly Field[];
  readonly idstrs: readonly Idstr[];
  readonly vmdesc?: { readonly lengthAt: number; readonly jsonAt: number; readonly length: number };
  /** idstr -> declared data bytes of each VFIO device (restore targets need one sim per device). */
  readonly vfio: ReadonlyMap<string, number>;
}

const TOP_LEVEL = new Set(['header', 'configuration', 'section', 'footer', 'command', 'eof', 'vmdesc']);

/** Decodes `path` (a stream that must decode cleanly) and lists where its fields are. */
export async function streamLayout(path: string, size: number): Promise<StreamLayout> {
  const records: number[] = [];
  const items: number[] = [];
  const fields: Field[] = [];
  const sectionIds: Field[] = [];
  const idstrs: Idstr[] = [];
  const vfio = new Map<string, number>();
  let vmdesc: StreamLayout['vmdesc'];
  for await (const ev of readStreamFile(path)) {
    (TOP_LEVEL.has(ev.type) ? records : items).push(ev.offset);
    const at = ev.offset;
    switch (ev.type) {
      case 'header':
        fields.push({ offset: at, width: 4, what: 'magic' }, { offset: at + 4, width: 4, what: 'version' });
        break;
      case 'configuration':
        fields.push({ offset: at + 1, width: 4, what: 'configuration name length' });
        break;
      case 'section': {
        const id: Field = { offset: at + 1, width: 4, what: `section id (${ev.kind} ${ev.section.idstr})` };
        sectionIds.push(id);
        fields.push(id);
        if (ev.kind === 'START' || ev.kind === 'FULL') {
          const len = ev.section.idstr.length;
          idstrs.push({ offset: at + 5, name: ev.section.idstr });
          fields.push(
            { offset: at + 5, width: 1, what: 'idstr length' },
            { offset: at + 6 + len, width: 4, what: 'instance id' },
            { offset: at + 10 + len, width: 4, what: 'version id' },
          );
        }
        break;
      }
      case 'footer':
        sectionIds.push({ offset: at + 1, width: 4, what: 'footer section id' });
        break;
      case 'command':
        fields.push({ offset: at + 1, width: 2, what: 'command' }, { offset: at + 3, width: 2, what: 'command length' });
        break;
      case 'vmdesc':
        fields.push({ offset: at + 1, width: 4, what: 'vmdesc length' });
        vmdesc = { lengthAt: at + 1, jsonAt: at + 5, length: ev.json.length };
        break;
      case 'vfio-data':
        fields.push({ offset: at + 8, width: 8, what: `DATA_STATE size (${ev.section.idstr})` });
        vfio.set(ev.section.idstr, (vfio.get(ev.section.idstr) ?? 0) + ev.size);
        break;
      case 'vfio-marker':
      case 'vfio-multifd-placeholder':
        fields.push({ offset: at, width: 8, what: `VFIO marker (${ev.section.idstr})` });
        break;
      case 'ram-mem-size':
      case 'ram-page':
      case 'ram-zero':
      case 'ram-xbzrle':
      case 'ram-compressed':
      case 'ram-eos':
      case 'ram-multifd-flush':
        fields.push({ offset: at, width: 8, what: `RAM address|flags (${ev.type})` });
        break;
      default:
        break;
    }
  }
  return { size, records: [...new Set(records)], items: [...new Set(items)], fields, sectionIds, idstrs, vfio, ...(vmdesc ? { vmdesc } : {}) };
}

/**
 * A multifd channel capture's layout: packet boundaries as records, and the words of each
 * packet header (magic, version, flags, then the sizes and counts that follow) as fields.
 */
export function channelLayout(bytes: Buffer, pageSize = 4096): StreamLayout {
  const records: number[] = [0];
  const fields: Field[] = [];
  const dec = new MultifdDecoder({
    pageSize,
    onEvent: (ev) => {
      if (ev.type === 'init') return;
      records.push(ev.offset);
      for (let o = 0; o < 32; o += 4) fields.push({ offset: ev.offset + o, width: 4, what: `${ev.type} packet word ${o / 4}` });
      fields.push({ offset: ev.offset + 16, width: 8, what: `${ev.type} packet 64-bit word` });
    },
  });
  dec.push(bytes);
  dec.end();
  for (let o = 0; o < 16; o += 4) fields.push({ offset: o, width: 4, what: `init packet word ${o / 4}` });
  return { size: bytes.length, records, items: [], fields, sectionIds: [], idstrs: [], vfio: new Map() };
}
