// The few facts of a libvirt domain XML that inspect shows. Read with anchored
// patterns rather than an XML parser: libvirt writes these elements once, at
// fixed nesting, and a missing one is reported as undefined, never guessed.

export interface DomainFacts {
  name: string | undefined;
  uuid: string | undefined;
  /** The machine type QEMU was started with (`<os><type machine=...>`). */
  machine: string | undefined;
  /** `<domain type=...>`: kvm, qemu (TCG), ... */
  domainType: string | undefined;
}

function unescape(s: string): string {
  return s.replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&quot;/g, '"').replace(/&apos;/g, "'").replace(/&amp;/g, '&');
}

export function domainFacts(xml: string): DomainFacts {
  const text = (tag: string): string | undefined => {
    const m = new RegExp(`<${tag}>([^<]*)</${tag}>`).exec(xml);
    return m ? unescape(m[1]!.trim()) : undefined;
  };
  const os = /<os\b[^>]*>([\s\S]*?)<\/os>/.exec(xml)?.[1] ?? '';
  const machine = /<type\b[^>]*\bmachine=(['"])([^'"]*)\1/.exec(os)?.[2];
  const domainType = /<domain\b[^>]*\btype=(['"])([^'"]*)\1/.exec(xml)?.[2];
  return { name: text('name'), uuid: text('uuid'), machine: machine && unescape(machine), domainType };
}
