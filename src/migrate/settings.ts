// The migration settings `migrate` applies to both QEMUs: capabilities (`NAME=on,...`) and
// parameters (`NAME=VALUE,...`), parsed into what QMP's migrate-set-capabilities and
// migrate-set-parameters take, and checked against what each QEMU offers.
import { UsageError } from '../errors.js';
import { MigrateRefusedError } from './errors.js';

export type ParameterValue = number | string | boolean;

function pairs(text: string, what: string): [string, string][] {
  return text.split(',').filter((p) => p !== '').map((p) => {
    const eq = p.indexOf('=');
    if (eq <= 0) throw new UsageError(`${what} takes NAME=VALUE,..., got ${JSON.stringify(p)}`);
    return [p.slice(0, eq), p.slice(eq + 1)];
  });
}

/** `xbzrle=on,multifd=off` -> { xbzrle: true, multifd: false }. */
export function parseCapabilities(texts: readonly string[]): Record<string, boolean> {
  const out: Record<string, boolean> = {};
  for (const [name, v] of texts.flatMap((t) => pairs(t, '--caps'))) {
    if (v !== 'on' && v !== 'off') throw new UsageError(`--caps ${name} takes on or off, got ${JSON.stringify(v)}`);
    out[name] = v === 'on';
  }
  return out;
}

/** `multifd-channels=4,tls-creds=` -> numbers where the value is an integer, booleans for on/off, else strings. */
export function parseParameters(texts: readonly string[]): Record<string, ParameterValue> {
  const out: Record<string, ParameterValue> = {};
  for (const [name, v] of texts.flatMap((t) => pairs(t, '--params'))) {
    out[name] = /^-?\d+$/.test(v) ? Number(v) : v === 'on' ? true : v === 'off' ? false : v;
  }
  return out;
}

export interface SideOffer {
  side: 'source' | 'destination';
  version: string;
  capabilities: ReadonlySet<string>;
}

/** Refuses (before anything is set) a capability that either QEMU does not have. */
export function checkCapabilities(wanted: Record<string, boolean>, offers: readonly SideOffer[]): void {
  for (const name of Object.keys(wanted)) {
    for (const o of offers) {
      if (!o.capabilities.has(name)) {
        throw new MigrateRefusedError(`capability ${name} is not available on the ${o.side} (QEMU ${o.version}); it offers ${[...o.capabilities].sort().join(', ')}`, o.side);
      }
    }
  }
}
