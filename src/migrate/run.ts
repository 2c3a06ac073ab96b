// `migrate`: one live migration between two running QEMUs, driven over their QMP sockets.
// Both QEMUs must offer every capability asked for (checked before anything is set); the
// same capabilities and parameters are then set on both, the destination (started with
// `-incoming defer`) listens (on a URI, or on a socket migbridge opened and passed to it),
// the source migrates, and its progress is followed until both sides have ended. A failure
// of either side, a monitor that stops answering, or an abort (Ctrl-C) cancels the source's
// migration (QEMU resumes the guest there) and quits the destination (it holds no complete
// guest), and the error carries the report of both sides.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { errorCode } from '../errors.js';
import { proxy, type ProxyNote, type ProxyReport, ProxyFailedError } from '../engine/proxy.js';
import { closeSync, socketpair } from '../native/sys.js';
import { EndpointError, formatEndpoint, parseEndpoint, type Endpoint } from '../util/endpoint.js';
import { QmpClient, type QmpEvent } from '../qmp/client.js';
import { MigrateFailedError, MigrateRefusedError } from './errors.js';
import { progressOf, type MigrateProgress, type QueryMigrate } from './progress.js';
import type { MigrateReport, SideReport, VfioDeviceBytes } from './report.js';
import { checkCapabilities, type ParameterValue } from './settings.js';

export interface MigrateOptions {
  /** QMP unix sockets of the two QEMUs. */
  sourceQmp: string;
  destinationQmp: string;
  /**
   * Where the destination listens: an endpoint (`tcp:HOST:PORT`, `unix:PATH`), or `fd`:
   * migbridge makes a socket pair and passes one end to each QEMU (getfd + fd:NAME).
   */
  incoming: string;
  /** What the source connects to, when it differs from `incoming` (NAT, another name). */
  uri?: string;
  /** Forward the stream through an in-process proxy (to a `tcp:` or `unix:` incoming). */
  viaProxy?: boolean;
  /** With the proxy: tee the stream to this file (kept only when it completed). */
  tee?: string;
  capabilities?: Record<string, boolean>;
  parameters?: Record<string, ParameterValue>;
  /** QEMU's downtime-limit on the source (ms). */
  maxDowntimeMs?: number;
  /** Bound on connecting and on each QMP command (default 10 s). */
  qmpTimeoutMs?: number;
  /** Once the source completed, how long the destination may take to finish (default 60 s). */
  finishTimeoutMs?: number;
  /** How often the source's progress is sampled (default 500 ms). */
  progressIntervalMs?: number;
  onProgress?: (p: MigrateProgress) => void;
  signal?: AbortSignal;
}

const TERMINAL = new Set(['completed', 'failed', 'cancelled']);
const FD_NAME = 'migbridge-migration';
const DESTINATION_GONE = 'QEMU closed its monitor (it exits when a load fails)';

function isEnd(e: QmpEvent): boolean {
  return e.event === 'MIGRATION' && TERMINAL.has(String(e.data?.status));
}

/** `fd`, or an endpoint QEMU can listen on (`fd:N` is ours to inherit, not QEMU's: refused). */
function incomingEndpoint(text: string): Endpoint | null {
  if (text === 'fd') return null;
  const ep = parseEndpoint(text, '--incoming', 'connect');
  if (ep.kind === 'fd') throw new EndpointError(text, `--incoming ${JSON.stringify(text)}: QEMU listens on tcp:HOST:PORT or unix:PATH; for a socket migbridge passes to both QEMUs write fd`);
  return ep;
}

/** Options that do not fit together: refused before any QEMU is contacted. */
function checkOptions(opts: MigrateOptions, incoming: Endpoint | null): void {
  if (opts.viaProxy && incoming === null) {
    throw new MigrateRefusedError('--via-proxy forwards to where the destination listens: give --incoming tcp:HOST:PORT or unix:PATH');
  }
  if (opts.viaProxy && opts.parameters?.['tls-creds']) {
    throw new MigrateRefusedError('--via-proxy cannot decode or tee a TLS stream (tls-creds is set): migrate without the proxy, or without tls-creds inside a tunnel or on a trusted link');
  }
  if (opts.tee !== undefined && !opts.viaProxy) throw new MigrateRefusedError('--tee needs --via-proxy (the proxy writes the tee)');
  if (incoming === null && (opts.capabilities?.multifd || opts.uri !== undefined)) {
    throw new MigrateRefusedError('--incoming fd passes one socket: it cannot carry multifd channels or go to another --uri');
  }
}

function versionText(c: QmpClient): string {
  return `${c.version.major}.${c.version.minor}.${c.version.micro}`;
}

function sideReport(c: QmpClient): SideReport {
  return { qmp: c.path, version: versionText(c), migration: null, error: null, runState: null, action: null };
}

/** Runs one migration; resolves with the report when both sides completed, else throws MigrateFailedError (or MigrateRefusedError before anything changed). */
export async function migrate(opts: MigrateOptions): Promise<MigrateReport> {
  const qmpTimeoutMs = opts.qmpTimeoutMs ?? 10_000;
  const incoming = incomingEndpoint(opts.incoming);
  checkOptions(opts, incoming);
  const src = await QmpClient.connect(opts.sourceQmp, { label: 'source', connectTimeoutMs: qmpTimeoutMs, commandTimeoutMs: qmpTimeoutMs });
  let dst: QmpClient | undefined;
  try {
    dst = await QmpClient.connect(opts.destinationQmp, { label: 'destination', connectTimeoutMs: qmpTimeoutMs, commandTimeoutMs: qmpTimeoutMs });
    return await new Migration(opts, incoming, src, dst).run();
  } finally {
    src.close();
    dst?.close();
  }
}

class Migration {
  private readonly report: MigrateReport;
  private readonly capabilities: Record<string, boolean>;
  private readonly parameters: Record<string, ParameterValue>;
  private proxyRun: Promise<ProxyReport> | null = null;
  private proxyAbort = new AbortController();
  private proxyDir: string | null = null;
  private switchoverAt: number | null = null;
  private streamEndAt: number | null = null;
  private startedAt = 0;
  private sourceStarted = false;
  private incomingStarted = false;

  /** `incoming`: where the destination listens; null for `fd` (a socket pair migbridge passes). */
  constructor(
    private readonly opts: MigrateOptions,
    private readonly incoming: Endpoint | null,
    private readonly src: QmpClient,
    private readonly dst: QmpClient,
  ) {
    this.capabilities = { ...(opts.capabilities ?? {}) };
    this.parameters = { ...(opts.parameters ?? {}) };
    if (opts.maxDowntimeMs !== undefined) this.parameters['downtime-limit'] = opts.maxDowntimeMs;
    this.report = {
      ok: false, uri: '', incoming: opts.incoming, capabilities: this.capabilities, parameters: this.parameters,
      source: sideReport(src), destination: sideReport(dst),
      totalTimeMs: null, downtimeMs: null, setupTimeMs: null, wallTimeMs: 0, wireDowntimeMs: null,
      ramBytes: null, vfioBytes: null, passes: 0, vfio: [], proxy: null, interrupted: null, failure: null,
    };
  }

  async run(): Promise<MigrateReport> {
    await this.prepare();
    try {
      await this.configure();
      const uri = await this.startIncoming();
      this.report.uri = uri;
      this.startedAt = performance.now();
      const srcSince = this.src.eventCount;
      await this.src.execute('migrate', { uri });
      this.sourceStarted = true;
      const end = await this.follow(srcSince);
      if (end !== 'completed') throw new Error(`the source's migration ${end}`);
      await this.finishDestination();
      await this.finishProxy();
      this.report.ok = true;
      return this.report;
    } catch (e) {
      throw await this.fail(e);
    } finally {
      this.report.wallTimeMs = this.startedAt ? Math.round(performance.now() - this.startedAt) : 0;
      if (this.proxyDir) rmSync(this.proxyDir, { recursive: true, force: true });
    }
  }

  /** What the QEMUs must offer is checked before anything is changed. */
  private async prepare(): Promise<void> {
    const offers = [];
    for (const [side, c] of [['source', this.src], ['destination', this.dst]] as const) {
      const caps = await c.execute<{ capability: string }[]>('query-migrate-capabilities');
      offers.push({ side, version: versionText(c), capabilities: new Set(caps.map((x) => x.capability)) });
    }
    checkCapabilities(this.capabilities, offers);
    const dstState = (await this.dst.execute<{ status: string }>('query-status')).status;
    if (dstState !== 'inmigrate') {
      throw new MigrateRefusedError(`the destination is not waiting for a migration (run state ${dstState}): start it with -incoming defer`, 'destination');
    }
    const srcMig = (await this.src.execute<QueryMigrate>('query-migrate')).status;
    if (srcMig !== undefined && !TERMINAL.has(srcMig) && srcMig !== 'none') {
      throw new MigrateRefusedError(`the source is already migrating (status ${srcMig})`, 'source');
    }
  }

  /** The same capabilities and parameters on both sides; `events` so both announce their end. */
  private async configure(): Promise<void> {
    const caps = Object.entries({ ...this.capabilities, events: true }).map(([capability, state]) => ({ capability, state }));
    for (const c of [this.src, this.dst]) {
      await c.execute('migrate-set-capabilities', { capabilities: caps });
      if (Object.keys(this.parameters).length) await c.execute('migrate-set-parameters', this.parameters);
    }
  }

  /** Starts the destination listening; returns the URI the source is to migrate to. */
  private async startIncoming(): Promise<string> {
    const { opts } = this;
    if (this.incoming === null) return this.passSocketPair();
    const uri = formatEndpoint(this.incoming);
    await this.dst.execute('migrate-incoming', { uri });
    this.incomingStarted = true;
    if (!opts.viaProxy) return opts.uri ?? uri;
    // The source reaches the proxy by a unix socket in a private directory (0600).
    this.proxyDir = mkdtempSync(join(tmpdir(), 'migbridge-migrate-'));
    const listen = join(this.proxyDir, 'proxy.sock');
    const listening = new Promise<void>((resolve, reject) => {
      this.proxyRun = proxy({
        listen: { kind: 'unix', path: listen }, to: this.incoming!, signal: this.proxyAbort.signal,
        ...(opts.tee !== undefined ? { tee: opts.tee } : {}),
        onListening: () => resolve(),
        onNote: (n) => this.onProxyNote(n),
      });
      this.proxyRun.catch(reject);
    });
    await listening;
    return `unix:${listen}`;
  }

  /** `fd`: one end of a socket pair to each QEMU (QEMU keeps its own copies; ours are closed). */
  private async passSocketPair(): Promise<string> {
    const [a, b] = socketpair();
    try {
      await this.dst.executeWithFd('getfd', { fdname: FD_NAME }, a);
      await this.src.executeWithFd('getfd', { fdname: FD_NAME }, b);
    } finally {
      closeSync(a);
      closeSync(b);
    }
    await this.dst.execute('migrate-incoming', { uri: `fd:${FD_NAME}` });
    this.incomingStarted = true;
    return `fd:${FD_NAME}`;
  }

  /**
   * The switchover as the wire shows it: from the first record the source sends once stopped
   * (QEMU 8.2+'s SWITCHOVER_START command, else the first END section) to its closing the
   * stream after the last byte. (FULL sections cannot be delimited live without the vmdesc,
   * so the EOF record itself is not seen until the stream has ended.)
   */
  private onProxyNote(n: ProxyNote): void {
    const now = performance.now();
    const switchover = n.type === 'record' && (n.kind === 'END' || (n.kind === 'COMMAND' && n.command === 'SWITCHOVER_START'));
    if (switchover && this.switchoverAt === null) this.switchoverAt = now;
    if (n.type === 'closed' && n.side === 'source' && n.how === 'fin' && this.streamEndAt === null) this.streamEndAt = now;
  }

  /**
   * Samples the source's progress until its MIGRATION event says it ended; a destination
   * that fails first (it exits, or announces failure) ends the wait as well. An abort
   * cancels the source's migration.
   */
  private async follow(srcSince: number): Promise<string> {
    const { opts } = this;
    let sampling = false;
    const timer = setInterval(() => {
      if (sampling || !opts.onProgress) return;
      sampling = true;
      this.src.execute<QueryMigrate>('query-migrate')
        .then((q) => { if (q.status && !TERMINAL.has(q.status)) opts.onProgress?.(progressOf(q, performance.now() - this.startedAt)); })
        .catch(() => undefined) // a missed sample is not a failure; the end event decides
        .finally(() => { sampling = false; });
    }, opts.progressIntervalMs ?? 500);
    const aborted = new Promise<{ why: string }>((resolve) => {
      const signal = opts.signal;
      if (!signal) return;
      const onAbort = (): void => resolve({ why: String(signal.reason ?? 'aborted') });
      if (signal.aborted) onAbort();
      else signal.addEventListener('abort', onAbort, { once: true });
    });
    const dstFailed = this.dst.waitEvent((e) => isEnd(e) && e.data?.status !== 'completed', { what: 'destination failure' })
      .then(() => 'destination failed' as const, () => 'destination gone' as const);
    try {
      const srcEnd = this.src.waitEvent(isEnd, { since: srcSince, what: 'the end of the migration' });
      let first = await Promise.race([srcEnd, aborted, dstFailed]);
      // The destination failing first: the source notices through its connection; let it tell its own end.
      if (typeof first === 'string') first = await Promise.race([srcEnd, aborted]);
      if ('why' in first) return await this.cancelSource(first.why, srcSince);
      return String(first.data?.status);
    } finally {
      clearInterval(timer);
    }
  }

  /** An abort: migrate_cancel, then QEMU's own end decides (a migration past its switchover completes anyway). */
  private async cancelSource(why: string, since: number): Promise<string> {
    const sent = await this.src.execute('migrate_cancel').then(() => true, () => false);
    this.report.source.action = sent ? 'migrate_cancel' : 'migrate_cancel (no answer)';
    const end = await this.src.waitEvent(isEnd, { since, timeoutMs: this.opts.qmpTimeoutMs ?? 10_000, what: 'the cancelled migration to end' }).catch(() => null);
    if (end?.data?.status !== 'completed') throw new CancelledError(why);
    this.report.interrupted = `${why} came after the switchover: the migration completed anyway`;
    return 'completed';
  }

  /** After the source completed: the destination's own MIGRATION end, then its run state once it left `inmigrate`. */
  private async finishDestination(): Promise<void> {
    const timeoutMs = this.opts.finishTimeoutMs ?? 60_000;
    const end = await this.dst.waitEvent(isEnd, { timeoutMs, what: 'the end of the incoming migration' });
    await this.collect();
    if (end.data?.status !== 'completed') throw new Error(`the destination's migration ${String(end.data?.status)}`);
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const state = (await this.dst.execute<{ status: string }>('query-status')).status;
      this.report.destination.runState = state;
      if (state !== 'inmigrate') return;
      if (performance.now() > deadline) throw new Error(`the destination is still in inmigrate ${timeoutMs} ms after its migration completed`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  private async finishProxy(): Promise<void> {
    if (!this.proxyRun) return;
    const r = await this.proxyRun;
    this.applyProxy(r);
  }

  private applyProxy(r: ProxyReport): void {
    this.report.proxy = r;
    this.report.vfio = r.live.vfio.map((d): VfioDeviceBytes => ({ idstr: d.idstr, dataBytes: d.dataBytes, precopyBytes: d.precopyBytes, stopCopyBytes: d.stopCopyBytes }));
    if (this.switchoverAt !== null && this.streamEndAt !== null) this.report.wireDowntimeMs = Math.round(this.streamEndAt - this.switchoverAt);
  }

  /** Both sides' query-migrate and run state, as far as they answer. */
  private async collect(): Promise<void> {
    const q = await this.src.execute<QueryMigrate>('query-migrate').catch((e: unknown) => ({ 'error-desc': `no answer: ${errorCode(e)}` }) as QueryMigrate);
    const r = this.report;
    r.source.migration = q.status ?? null;
    r.source.error = q['error-desc'] ?? null;
    r.totalTimeMs = q['total-time'] ?? null;
    r.downtimeMs = q.downtime ?? null;
    r.setupTimeMs = q['setup-time'] ?? null;
    r.ramBytes = q.ram?.transferred ?? null;
    r.vfioBytes = q.vfio?.transferred ?? null;
    r.passes = q.ram?.['dirty-sync-count'] ?? 0;
    r.source.runState = (await this.src.execute<{ status: string }>('query-status').catch(() => null))?.status ?? null;
    if (this.dst.isClosed) {
      r.destination.error ??= DESTINATION_GONE;
      return;
    }
    const d = await this.dst.execute<QueryMigrate>('query-migrate')
      .catch((e: unknown) => ({ 'error-desc': this.dst.isClosed ? DESTINATION_GONE : `no answer: ${errorCode(e)}` }) as QueryMigrate);
    r.destination.migration = d.status ?? null;
    r.destination.error = d['error-desc'] ?? null;
    r.destination.runState = (await this.dst.execute<{ status: string }>('query-status').catch(() => null))?.status ?? null;
  }

  /** Brings both sides to a defined end after a failure and turns it into MigrateFailedError. */
  private async fail(e: unknown): Promise<Error> {
    if (e instanceof MigrateRefusedError) return e;
    const cancelled = e instanceof CancelledError;
    if (this.sourceStarted && this.report.source.action === null) {
      const status = (await this.src.execute<QueryMigrate>('query-migrate').catch(() => null))?.status;
      if (status && !TERMINAL.has(status)) {
        const since = this.src.eventCount;
        const done = await this.src.execute('migrate_cancel').then(() => true, () => false);
        this.report.source.action = done ? 'migrate_cancel' : 'migrate_cancel (no answer)';
        if (done) await this.src.waitEvent(isEnd, { since, timeoutMs: this.opts.qmpTimeoutMs ?? 10_000, what: 'the cancel to finish' }).catch(() => undefined);
      }
    }
    // The proxy closes both its connections: the destination sees its stream end.
    this.proxyAbort.abort();
    if (this.proxyRun) {
      const r = await this.proxyRun.catch((x: unknown) => (x instanceof ProxyFailedError ? x.report : null));
      if (r) this.applyProxy(r);
    }
    // The destination's stream is incomplete: QEMU reports its failure, then it is quit.
    if (this.incomingStarted && !this.dst.isClosed) {
      await this.dst.waitEvent(isEnd, { timeoutMs: 2_000, what: 'the destination failure' }).catch(() => undefined);
    }
    await this.collect();
    if (this.incomingStarted && !this.dst.isClosed) {
      const quit = await this.dst.execute('quit').then(() => true, () => false);
      this.report.destination.action = quit ? 'quit' : 'quit (no answer)';
    }
    const { side, message } = this.blame(e, cancelled);
    this.report.failure = { side, message };
    return new MigrateFailedError(this.report, cancelled ? 'EMIGRATE_CANCELLED' : 'EMIGRATE_FAILED', message, e);
  }

  /** Which side failed and QEMU's own words for it, in preference to ours. */
  private blame(e: unknown, cancelled: boolean): { side: 'source' | 'destination' | 'migbridge'; message: string } {
    const r = this.report;
    if (cancelled) return { side: 'migbridge', message: `migration cancelled (${(e as Error).message})` };
    const label = (e as { label?: unknown }).label;
    if (label === 'source' || label === 'destination') return { side: label, message: (e as Error).message };
    const both = (first: SideReport, second: SideReport, names: [string, string]): string =>
      `${names[0]}: ${first.error}${second.error ? `; ${names[1]}: ${second.error}` : ''}`;
    // A destination that failed its load (or exited over it) caused the source's failure, not the reverse.
    if (r.destination.error && (r.destination.migration === 'failed' || this.dst.isClosed)) {
      return { side: 'destination', message: both(r.destination, r.source, ['destination', 'source']) };
    }
    if (r.source.error) return { side: 'source', message: both(r.source, r.destination, ['source', 'destination']) };
    if (r.destination.error) return { side: 'destination', message: `destination: ${r.destination.error}` };
    return { side: 'migbridge', message: e instanceof Error ? e.message : String(e) };
  }
}

class CancelledError extends Error {}
