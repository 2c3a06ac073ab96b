// Parses the simulated device spec: `sim:size=256MiB,seed=1,rate=2GiB/s,...` (every key
// is documented in docs/devices.md). Bad input -> UsageError naming the key and value.
import { UsageError } from '../../errors.js';
import { MigFlag, MigState, parseFlags, parseState, stateName } from '../../fsm/index.js';

export type SimFault =
  | { kind: 'eio'; at: number }
  | { kind: 'error'; state: MigState }
  | { kind: 'stall'; at: number }
  | { kind: 'slow-stop'; ms: number }
  | { kind: 'bad-resume' }
  /** Resuming: the device takes `at` bytes, then writes fail (EPIPE) and the exit from RESUMING loads what it took (mtty's EFAULT hazard). */
  | { kind: 'write-error'; at: number }
  /** GET MIG_DATA_SIZE answers `bytes` whatever the stream holds (a driver whose estimate is wrong; the stream is unchanged). */
  | { kind: 'data-size'; bytes: number };

export interface SimConfig {
  id?: string;
  /** State bytes (default 64 MiB). */
  size: number;
  seed: bigint;
  /** True when seed= was given (else the factory picks one per instance). */
  seedGiven: boolean;
  /** Producer bytes per second, 0 = unlimited. */
  rate: number;
  /** Delay before each produced chunk, in ms. */
  latencyMs: number;
  /** Bytes per producer write (default 256 KiB). */
  chunk: number;
  /** Initial precopy bytes of block data (default 0: only the header is initial data). */
  precopy: number;
  /** Bytes per second the running device dirties (re-sent in PRE_COPY rounds), 0 = none. */
  dirtyRate: number;
  /** VFIO_MIGRATION_* flags (default 7). */
  flags: number;
  faults: SimFault[];
  /**
   * Where the device records its state (JSON: id, state, digest, loads) after every change
   * and when the process exits: lets a test see a device of a migbridge process it ran.
   */
  stateFile?: string;
}

export const SIM_DEFAULTS = {
  size: 64 * 1024 * 1024,
  chunk: 256 * 1024,
  flags: 7,
} as const;

/** Largest state the simulator accepts (its generation table stays small). */
export const SIM_MAX_SIZE = 64 * 1024 ** 3;

const UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 1024,
  kb: 1000,
  kib: 1024,
  m: 1024 ** 2,
  mb: 1000 ** 2,
  mib: 1024 ** 2,
  g: 1024 ** 3,
  gb: 1000 ** 3,
  gib: 1024 ** 3,
  t: 1024 ** 4,
  tib: 1024 ** 4,
};

/** "256MiB", "1.5G", "4096", "1MB" (decimal) -> bytes. */
export function parseSize(text: string, what = 'size'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(text);
  const unit = m ? UNITS[m[2]!.toLowerCase()] : undefined;
  if (!m || unit === undefined) throw new UsageError(`${what}: cannot parse ${JSON.stringify(text)} (e.g. 4096, 64KiB, 256MiB, 2GiB)`);
  const v = Math.round(Number(m[1]) * unit);
  if (!Number.isSafeInteger(v)) throw new UsageError(`${what}: ${JSON.stringify(text)} is too large`);
  return v;
}

/** "2GiB/s", "500MB/s", "0" -> bytes per second. */
export function parseRate(text: string, what = 'rate'): number {
  const t = text.trim();
  return parseSize(t.replace(/\/s$/i, ''), what);
}

/** "200us", "1.5ms", "2s", "500" (ms) -> milliseconds. */
export function parseDuration(text: string, what = 'duration'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s|)\s*$/i.exec(text);
  if (!m) throw new UsageError(`${what}: cannot parse ${JSON.stringify(text)} (e.g. 200us, 5ms, 1s)`);
  const v = Number(m[1]);
  switch (m[2]!.toLowerCase()) {
    case 'ns':
      return v / 1e6;
    case 'us':
    case 'µs':
      return v / 1e3;
    case 's':
      return v * 1e3;
    default:
      return v;
  }
}

function parseFault(text: string): SimFault {
  const [kind, arg] = text.split('@', 2) as [string, string | undefined];
  const need = (): string => {
    if (arg === undefined || arg === '') throw new UsageError(`sim fail=${text}: ${kind} needs @VALUE`);
    return arg;
  };
  switch (kind.toLowerCase()) {
    case 'eio':
      return { kind: 'eio', at: parseSize(need(), `fail=eio@`) };
    case 'stall':
      return { kind: 'stall', at: parseSize(need(), `fail=stall@`) };
    case 'slow-stop':
      return { kind: 'slow-stop', ms: parseDuration(need(), 'fail=slow-stop@') };
    case 'error': {
      const state = parseState(need());
      if (state === MigState.ERROR) throw new UsageError(`sim fail=${text}: the failing arc's target cannot be ERROR`);
      return { kind: 'error', state };
    }
    case 'write-error':
      return { kind: 'write-error', at: parseSize(need(), 'fail=write-error@') };
    case 'data-size':
      return { kind: 'data-size', bytes: parseSize(need(), 'fail=data-size@') };
    case 'bad-resume':
      if (arg !== undefined) throw new UsageError(`sim fail=bad-resume takes no @VALUE`);
      return { kind: 'bad-resume' };
    default:
      throw new UsageError(`sim fail=${text}: unknown fault ${JSON.stringify(kind)} (eio@SIZE, error@STATE, stall@SIZE, slow-stop@TIME, bad-resume, write-error@SIZE, data-size@SIZE)`);
  }
}

/** Parses `sim:k=v,...` (the `sim:` prefix is optional here). */
export function parseSimSpec(spec: string): SimConfig {
  const body = spec.startsWith('sim:') ? spec.slice(4) : spec === 'sim' ? '' : spec;
  const cfg: SimConfig = {
    size: SIM_DEFAULTS.size,
    seed: 1n,
    seedGiven: false,
    rate: 0,
    latencyMs: 0,
    chunk: SIM_DEFAULTS.chunk,
    precopy: 0,
    dirtyRate: 0,
    flags: SIM_DEFAULTS.flags,
    faults: [],
  };
  for (const part of body.split(',').map((p) => p.trim()).filter(Boolean)) {
    const eq = part.indexOf('=');
    if (eq < 0) throw new UsageError(`sim spec ${JSON.stringify(spec)}: ${JSON.stringify(part)} is not key=value`);
    const key = part.slice(0, eq).trim().toLowerCase();
    const value = part.slice(eq + 1).trim();
    switch (key) {
      case 'id':
        if (!/^[A-Za-z0-9_.:-]+$/.test(value)) throw new UsageError(`sim id=${JSON.stringify(value)}: use letters, digits, _ . : -`);
        cfg.id = value;
        break;
      case 'size':
        cfg.size = parseSize(value, 'sim size=');
        if (cfg.size > SIM_MAX_SIZE) throw new UsageError(`sim size=${value}: at most 64GiB`);
        break;
      case 'seed':
        if (!/^(0x[0-9a-f]+|\d+)$/i.test(value)) throw new UsageError(`sim seed=${JSON.stringify(value)}: an unsigned integer`);
        cfg.seed = BigInt(value) & 0xffffffffffffffffn;
        cfg.seedGiven = true;
        break;
      case 'rate':
        cfg.rate = parseRate(value, 'sim rate=');
        break;
      case 'latency':
        cfg.latencyMs = parseDuration(value, 'sim latency=');
        break;
      case 'chunk':
        cfg.chunk = parseSize(value, 'sim chunk=');
        if (cfg.chunk < 4096 || cfg.chunk > 16 * 1024 * 1024) throw new UsageError(`sim chunk=${value}: between 4KiB and 16MiB`);
        break;
      case 'precopy':
        cfg.precopy = parseSize(value, 'sim precopy=');
        break;
      case 'dirty':
        cfg.dirtyRate = parseRate(value, 'sim dirty=');
        break;
      case 'flags':
        try {
          // Commas separate spec keys, so flag names are joined with + or |.
          cfg.flags = parseFlags(value.replace(/[+|]/g, ','));
        } catch (e) {
          throw new UsageError(`sim flags=${value}: ${(e as Error).message}`);
        }
        if (cfg.flags < 0 || cfg.flags > 0xffffffff) throw new UsageError(`sim flags=${value}: out of range`);
        // The kernel registers no migration driver without STOP_COPY (vfio_main refuses it), so
        // such a spec describes no device that can exist; flags=0 (no migration at all) can.
        if (cfg.flags !== 0 && (cfg.flags & MigFlag.STOP_COPY) === 0) {
          throw new UsageError(`sim flags=${value}: a migration device always has stop-copy (write stop-copy+${value})`);
        }
        break;
      case 'fail':
        cfg.faults.push(parseFault(value));
        break;
      case 'state-file':
        if (!value) throw new UsageError('sim state-file= needs a path');
        cfg.stateFile = value;
        break;
      default:
        throw new UsageError(
          `sim spec ${JSON.stringify(spec)}: unknown key ${JSON.stringify(key)} (id, size, seed, rate, latency, chunk, precopy, dirty, flags, fail, state-file)`,
        );
    }
  }
  if (cfg.precopy > cfg.size) cfg.precopy = cfg.size;
  return cfg;
}

/** Canonical spec text for a config (for listings). */
export function formatSimSpec(c: SimConfig): string {
  const parts = [`size=${c.size}`, `seed=${c.seed}`];
  if (c.rate) parts.push(`rate=${c.rate}/s`);
  if (c.latencyMs) parts.push(`latency=${c.latencyMs}ms`);
  if (c.precopy) parts.push(`precopy=${c.precopy}`);
  if (c.dirtyRate) parts.push(`dirty=${c.dirtyRate}/s`);
  if (c.flags !== SIM_DEFAULTS.flags) parts.push(`flags=${c.flags}`);
  for (const f of c.faults) {
    if (f.kind === 'eio' || f.kind === 'stall' || f.kind === 'write-error') parts.push(`fail=${f.kind}@${f.at}`);
    else if (f.kind === 'error') parts.push(`fail=error@${stateName(f.state).toLowerCase().replace(/_/g, '-')}`);
    else if (f.kind === 'data-size') parts.push(`fail=data-size@${f.bytes}`);
    else if (f.kind === 'slow-stop') parts.push(`fail=slow-stop@${f.ms}ms`);
    else parts.push('fail=bad-resume');
  }
  return 'sim:' + parts.join(',');
}
