// Whether an older QEMU can load a section: it refuses one whose version is newer than the
// one it registered ("savevm: unsupported version N for 'X' vM"). Known for QEMU 7.2 only,
// from a table generated from 7.2 itself (qemu72-sections.ts).
import { QEMU72_SECTION_VERSIONS } from './qemu72-sections.js';
import type { SectionRef } from './records.js';

const TABLES: ReadonlyMap<string, Readonly<Record<string, number>>> = new Map([['7.2', QEMU72_SECTION_VERSIONS]]);

export type SectionVerdict =
  | { ok: true }
  /** The target registers this section with an older version: it refuses the stream here. */
  | { ok: false; known: true; newest: number; why: string }
  /** The target's table does not name this section: it may lack it altogether. */
  | { ok: false; known: false; why: string };

/** The section's vmstate name: the idstr's last component (`0000:00:04.0/e1000` -> `e1000`). */
function sectionName(idstr: string): string {
  return idstr.slice(idstr.lastIndexOf('/') + 1);
}

/** Whether QEMU `target` (major.minor) loads `sec`; undefined when nothing is known about that release. */
export function sectionVerdict(sec: SectionRef, target: { major: number; minor: number }): SectionVerdict | undefined {
  const release = `${target.major}.${target.minor}`;
  const table = TABLES.get(release);
  if (!table) return undefined;
  const name = sectionName(sec.idstr);
  const newest = Object.hasOwn(table, name) ? table[name] : undefined;
  if (newest === undefined) return { ok: false, known: false, why: `section "${sec.idstr}" is not among QEMU ${release}'s known sections: not checked (that QEMU may not have it)` };
  if (sec.versionId <= newest) return { ok: true };
  return { ok: false, known: true, newest, why: `section "${sec.idstr}" has version ${sec.versionId}; QEMU ${release} loads "${name}" up to version ${newest} and refuses it` };
}
