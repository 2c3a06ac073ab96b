// A helper beside QEMU: sits between a source QEMU (`migrate uri=unix:IN`, or tcp:) and a
// destination QEMU (`-incoming unix:OUT`, or tcp:), forwards every byte unchanged both ways (the
// migration stream, and QEMU's return path back), optionally tees the forward stream to a
// file, and decodes it on the side for a report. The forwarding never waits for the
// decoder, and a decoding problem never breaks the migration.
//
// Closing is mirrored so each QEMU sees what a direct connection would show it: the
// source's FIN becomes the destination's, the destination's FIN the source's. One
// exception protects the source: when the destination goes away before the EOF record
// reached it, the source connection is closed at once, so the source's next write fails
// (as it would with the destination's socket gone) and the source's migration fails
// instead of completing into nothing.
//
// Multifd: the listening socket stays open until the main channel has finished, so a
// source with the `multifd` capability can open its extra channels; each connection is
// routed by its first 4 bytes (proxy-multifd.ts). A multifd channel failing fails the
// migration the same way, and the proxy's exit waits for every channel to close.
import { StreamedOutput } from '../util/atomic-file.js';
import { type Endpoint, type Listener, EndpointError, checkConnectable, connectEndpoint, formatEndpoint, listenEndpoint } from '../util/endpoint.js';
import * as net from 'node:net';
import { MigbridgeError, errnoNumber, errorCode as errCode } from '../errors.js';
import { RecordType } from '../qemu/constants.js';
import type { StreamEvent, VmDesc } from '../qemu/index.js';
import { inspectStreamFile } from '../qemu/summary.js';
import { parseVmDesc } from '../qemu/vmdesc.js';
import { LiveDecoder, tallyOf, type DecodeStop, type StreamTally } from './proxy-decode.js';
import { ConnectionRouter, MultifdChannels, type MultifdChannelReport, type RejectedConnection } from './proxy-multifd.js';
import type { ProxyFailure, ProxyNote, SideResult } from './proxy-types.js';
import { ProxyLink } from './proxy-link.js';
import { ReturnPathObserver, type ReturnPathSummary } from './proxy-return-path.js';

export type { DecodeStop, StreamTally } from './proxy-decode.js';
export type { ReturnPathSummary, ReturnPathMessage } from './proxy-return-path.js';
export type { MultifdChannelReport, RejectedConnection } from './proxy-multifd.js';
export type { ProxyFailure, ProxyNote, SideResult } from './proxy-types.js';

export const DEFAULT_CONNECT_WAIT_MS = 3000;

export interface ProxyOptions {
  /** Where to listen (the source QEMU's `migrate uri=`): unix:, tcp: or an inherited socket. */
  listen: Endpoint;
  /** The destination (a QEMU started with `-incoming`); every multifd channel connects there too. */
  to: Endpoint;
  /**
   * Also write the forward stream here (temp name, renamed once the stream completed), and
   * each multifd channel to `TEE.multifd-<channel id>` (kept only when the whole migration succeeded).
   */
  tee?: string;
  /** The stream's vmdesc, so FULL sections can be decoded live (QEMU sends it last). */
  vmdesc?: VmDesc;
  /** Live notes (records, VFIO sections, decode stop, connection events, progress). */
  onNote?: (note: ProxyNote) => void;
  /** Interval of `progress` notes (default 1000 ms; 0 = none). */
  progressIntervalMs?: number;
  /** Once one side closed after EOF, how long the other may take to close (default 30 s). */
  closeTimeoutMs?: number;
  /** Decoder backlog beyond which live decoding gives up (default 64 MiB). */
  maxDecodeBacklog?: number;
  /** How long to keep retrying a destination that is not listening yet (default 3000 ms). */
  connectWaitMs?: number;
  /** Called once the listening socket exists, with where it listens (a tcp port 0: the chosen port). */
  onListening?: (endpoint: Endpoint) => void;
  /** Aborts waiting for the source, or the forwarding (both connections are closed). */
  signal?: AbortSignal;
  /** Mode of the listening socket (default 0600: only the owner may connect); e.g. 0o660 for a QEMU of the same group. */
  socketMode?: number;
}

export interface ProxyReport {
  ok: boolean;
  /** Where the proxy listened, as bound (formatted endpoint). */
  listen: string;
  to: string;
  seconds: number;
  /** Source -> destination: bytes received from the source. */
  forwardBytes: number;
  /** Of those, bytes handed to the destination's socket (less when it went away). */
  deliveredBytes: number;
  /** Destination -> source (QEMU's return path), with the messages seen in it. */
  returnPath: ReturnPathSummary;
  source: SideResult;
  destination: SideResult;
  /** Offset of the EOF record and how it was established (decoded live, from the tee, or the vmdesc trailer). */
  eof: { offset: number; via: 'live' | 'tee' | 'trailer' } | null;
  /**
   * Status of the destination's return-path SHUT (0: it finished loading without error), or
   * null. With EOF not established (postcopy streams carry no vmdesc trailer), a SHUT 0 and
   * a clean close of the source count as a completed stream.
   */
  destinationShut: number | null;
  /** What was decoded while forwarding; `stopped` says where and why it ended early. */
  live: StreamTally & { complete: boolean; stopped: DecodeStop | null };
  /** The whole stream decoded from the tee file after the migration, when live decoding stopped early. */
  tee: { path: string; bytes: number; kept: boolean; why: string; report: StreamTally | null; error: { code: string; message: string; offset: number | null } | null } | null;
  /** The multifd channels (empty without the multifd capability), by channel id. */
  multifd: MultifdChannelReport[];
  /** Bytes received on all multifd channels together. */
  multifdBytes: number;
  /** Connections that were neither the main channel nor a multifd channel (closed unforwarded). */
  rejected: RejectedConnection[];
  failure: ProxyFailure | null;
}

export class ProxyError extends MigbridgeError {}

/** The error code for a failure on `side`. */
function failureCode(f: ProxyFailure): string {
  return f.side === 'source' ? 'EPROXY_SOURCE' : f.side === 'destination' ? 'EPROXY_DESTINATION' : 'EPROXY_STREAM';
}

/** What a JSON error says of a failure: its side, and on a multifd channel the channel and its connection. */
function failureFields(f: ProxyFailure | null | undefined): Record<string, unknown> {
  return { side: f?.side, ...(f && f.channel !== undefined ? { channel: f.channel, connection: f.connection } : {}) };
}

/** The migration through the proxy failed; `report` says what happened on each side. */
export class ProxyFailedError extends ProxyError {
  constructor(readonly report: ProxyReport, failure: ProxyFailure) {
    super(failureCode(failure), failure.message, { offset: failure.offset });
  }
  override toJSON(): Record<string, unknown> {
    return { ...super.toJSON(), ...failureFields(this.report.failure) };
  }
}

/**
 * A multifd channel failed before the main channel arrived, so there is no report yet: the
 * error itself names the side, the channel and its connection (seen under load: QEMU 10
 * sends pages on the channels before the main channel's first bytes).
 */
export class ProxyEarlyFailure extends ProxyError {
  constructor(readonly failure: ProxyFailure) {
    super(failureCode(failure), `${failure.message} (before the main channel arrived)`, { offset: failure.offset });
  }
  override toJSON(): Record<string, unknown> {
    return { ...super.toJSON(), ...failureFields(this.failure) };
  }
}

function sysError(op: string, e: unknown): ProxyError {
  const code = errCode(e);
  const errno = errnoNumber(code);
  return new ProxyError(code.startsWith('E') ? code : 'EPROXY', `${op}: ${e instanceof Error ? e.message : String(e)}`, errno !== undefined ? { errno, cause: e } : { cause: e });
}

/** The last bytes of the forward stream, to find the EOF + vmdesc trailer when decoding could not. */
class Tail {
  private chunks: Buffer[] = [];
  private bytes = 0;
  constructor(private readonly max: number) {}
  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.bytes += chunk.length;
    while (this.chunks.length > 1 && this.bytes - this.chunks[0]!.length >= this.max) this.bytes -= this.chunks.shift()!.length;
  }
  /** Offset of the EOF byte when the stream so far ends with EOF + a complete, valid VMDESCRIPTION (§5). */
  trailerEof(total: number): number | undefined {
    const tail = Buffer.concat(this.chunks);
    const base = total - tail.length;
    for (let p = tail.length - 6; p >= 1; p--) {
      if (tail[p] !== RecordType.VMDESCRIPTION || tail[p - 1] !== RecordType.EOF || tail[p + 5] !== 0x7b) continue;
      if (tail.readUInt32BE(p + 1) !== tail.length - p - 5) continue;
      try {
        parseVmDesc(tail.subarray(p + 5));
        return base + p - 1;
      } catch {
        return undefined;
      }
    }
    return undefined;
  }
}

async function listen(ep: Endpoint, signal: AbortSignal | undefined, mode: number | undefined): Promise<Listener> {
  // pauseOnConnect: nothing is read from the source before the destination is connected.
  const listening = listenEndpoint(ep, { what: '--listen', allowHalfOpen: true, pauseOnConnect: true, ...(mode !== undefined ? { mode } : {}) });
  const aborted = new Promise<never>((_, reject) => {
    signal?.addEventListener('abort', () => {
      void listening.then((l) => l.close(), () => undefined);
      reject(new ProxyError('EPROXY_ABORTED', 'aborted while starting'));
    }, { once: true });
  });
  aborted.catch(() => undefined);
  return Promise.race([listening, aborted]);
}

/** Resolves with the main channel's socket; rejects on abort, or when a multifd channel failed first. */
function mainChannel(arrived: Promise<net.Socket>, link: MainLink, where: string, signal?: AbortSignal): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const onAbort = (): void => reject(new ProxyError('EPROXY_ABORTED', `aborted while waiting for the source on ${where}`));
    if (signal?.aborted) return onAbort();
    signal?.addEventListener('abort', onAbort, { once: true });
    link.onFail = (f) => reject(new ProxyEarlyFailure(f));
    void arrived.then((s) => {
      signal?.removeEventListener('abort', onAbort);
      resolve(s);
    });
  });
}

async function connect(to: Endpoint, waitMs: number): Promise<net.Socket> {
  try {
    // A destination QEMU started together with the proxy may not have reached listen() yet.
    return await connectEndpoint(to, { what: '--to', waitMs, allowHalfOpen: true });
  } catch (e) {
    if (e instanceof EndpointError) throw e;
    throw sysError(`cannot connect to the destination ${formatEndpoint(to)}`, e as Error);
  }
}

/**
 * The tee: an output file (temporary `.FILE.partial-XXXX` until the migration completed, so a
 * killed proxy never leaves a capture that looks complete), created before listening so a bad
 * path fails before any QEMU connects. A deep write queue: the tee pauses the source only
 * when the disk really falls behind.
 */
type TeeFile = StreamedOutput;

function openTee(path: string): Promise<TeeFile> {
  return StreamedOutput.create(path, 8 << 20);
}

async function dropTee(tee: TeeFile | undefined): Promise<void> {
  await tee?.abort();
}

/** Runs one migration through the proxy; resolves with the report, or rejects with ProxyFailedError (report attached). */
/**
 * How the multifd channels and the main channel's forwarding reach each other: the first
 * failure of either, what a channel failure does to the main channel, and whether the
 * main stream's EOF reached the destination.
 */
interface MainLink {
  failure: ProxyFailure | null;
  onFail: (f: ProxyFailure) => void;
  mainLoaded: () => boolean;
}

/** Runs one migration through the proxy; resolves with the report, or rejects with ProxyFailedError (report attached). */
export async function proxy(opts: ProxyOptions): Promise<ProxyReport> {
  const note = opts.onNote ?? (() => undefined);
  // An unusable inherited destination fd is a usage error now, not once the source has come.
  checkConnectable(opts.to, '--to');
  const tee = opts.tee !== undefined ? await openTee(opts.tee) : undefined;
  const link: MainLink = { failure: null, onFail: () => undefined, mainLoaded: () => false };
  const channels: MultifdChannels = new MultifdChannels({
    to: opts.to,
    connectWaitMs: opts.connectWaitMs ?? DEFAULT_CONNECT_WAIT_MS,
    ...(opts.vmdesc?.page_size ? { pageSize: opts.vmdesc.page_size } : {}),
    note,
    // Any failure closes every source connection: the source's migration fails as a whole.
    fail: (f) => {
      link.failure ??= f;
      channels.closeSources();
      link.onFail(f);
    },
    mainLoaded: () => link.mainLoaded(),
  }, opts.tee);
  let listener: Listener;
  try {
    listener = await listen(opts.listen, opts.signal, opts.socketMode);
  } catch (err) {
    await dropTee(tee);
    throw err;
  }
  let arrived!: (s: net.Socket) => void;
  const mainArrived = new Promise<net.Socket>((r) => { arrived = r; });
  const router = new ConnectionRouter(listener, { main: (s) => arrived(s), multifd: (s, k) => channels.add(s, k), note });
  let listenerClosed = false;
  // The listening socket stays until the main channel finished: multifd channels may come at any time before.
  const closeListener = async (): Promise<void> => {
    if (listenerClosed) return;
    listenerClosed = true;
    router.closePending('still without its first 4 bytes when the main channel finished');
    await listener.close();
  };
  const listening = formatEndpoint(listener.endpoint);
  note({ type: 'listening', endpoint: listening });
  opts.onListening?.(listener.endpoint);
  let src: net.Socket;
  let dst: net.Socket;
  let pair: ProxyLink;
  let t0: number;
  try {
    src = await mainChannel(mainArrived, link, listening, opts.signal);
    t0 = Date.now();
    // Watched from the start: the source may fail while the destination is being connected.
    pair = new ProxyLink(src);
    note({ type: 'connected', side: 'source' });
    try {
      dst = await connect(opts.to, opts.connectWaitMs ?? DEFAULT_CONNECT_WAIT_MS);
    } catch (err) {
      // The source's connection goes too, so its migration fails rather than waits.
      src.destroy();
      throw err;
    }
  } catch (err) {
    channels.destroyAll();
    await closeListener();
    await channels.settle(0);
    await channels.finishTees(false);
    await dropTee(tee);
    throw err;
  }
  note({ type: 'connected', side: 'destination' });
  return forward(opts, pair, dst, t0, note, tee, { link, channels, router, closeListener, listening });
}

interface Around {
  link: MainLink;
  channels: MultifdChannels;
  router: ConnectionRouter;
  closeListener: () => Promise<void>;
  /** The bound listening endpoint, formatted for the report. */
  listening: string;
}

async function forward(opts: ProxyOptions, pair: ProxyLink, dst: net.Socket, t0: number, note: (n: ProxyNote) => void, teeFile: TeeFile | undefined, around: Around): Promise<ProxyReport> {
  const { link, channels, router, closeListener } = around;
  const src = pair.source;
  const rp = new ReturnPathObserver();
  const tail = new Tail(16 << 20);
  let records = 0;
  let vfioSec: { offset: number; kind: string; idstr: string; sectionId: number; dataBytes: number; chunks: number } | undefined;
  const endVfioSection = (): void => {
    if (vfioSec) note({ type: 'vfio-section', ...vfioSec });
    vfioSec = undefined;
  };
  const onEvent = (ev: StreamEvent): void => {
    switch (ev.type) {
      case 'configuration': records++; note({ type: 'record', offset: ev.offset, kind: 'CONFIGURATION' }); return;
      case 'section':
        records++;
        endVfioSection();
        if (ev.section.handler === 'vfio') vfioSec = { offset: ev.offset, kind: ev.kind, idstr: ev.section.idstr, sectionId: ev.section.sectionId, dataBytes: 0, chunks: 0 };
        note({ type: 'record', offset: ev.offset, kind: ev.kind, idstr: ev.section.idstr, sectionId: ev.section.sectionId });
        return;
      case 'vfio-data':
        if (vfioSec) { vfioSec.dataBytes += ev.size; vfioSec.chunks++; }
        return;
      case 'footer': endVfioSection(); return;
      case 'command': records++; endVfioSection(); note({ type: 'record', offset: ev.offset, kind: 'COMMAND', command: ev.name }); return;
      case 'eof': records++; endVfioSection(); note({ type: 'record', offset: ev.offset, kind: 'EOF' }); return;
      case 'vmdesc': records++; note({ type: 'record', offset: ev.offset, kind: 'VMDESCRIPTION' }); return;
      default:
    }
  };
  const live = new LiveDecoder({
    ...(opts.vmdesc ? { vmdesc: opts.vmdesc } : {}),
    ...(opts.maxDecodeBacklog !== undefined ? { maxBacklog: opts.maxDecodeBacklog } : {}),
    onEvent,
    onStop: (stop) => note({ type: 'decode-stopped', stop }),
  });

  const teeOut = teeFile?.out;
  const teeTmp = teeFile?.file.tempPath;
  // A tee that cannot be written is reported; the migration itself goes on.
  let teeError: unknown;

  const source: SideResult = { closed: 'open', offset: 0, error: null };
  const destination: SideResult = { closed: 'open', offset: 0, error: null };
  const srcGone = (): boolean => pair.src !== 'open';
  const dstGone = (): boolean => pair.dst !== 'open';
  let deliveredAtClose: number | undefined;

  /** Did the EOF record reach the destination's socket? Brings the decoder up to date first. */
  const eofDelivered = (upTo: number): boolean => {
    live.flush();
    const eof = live.eofOffset ?? tail.trailerEof(pair.forwardBytes);
    if (eof !== undefined) return eof < upTo;
    // Live decoding stopped without a vmdesc: the destination's own word on the return path.
    return rp.shutStatus === 0;
  };

  let closeTimer: NodeJS.Timeout | undefined;
  const armCloseTimer = (): void => {
    if (closeTimer || (srcGone() && dstGone())) return;
    const ms = opts.closeTimeoutMs ?? 30_000;
    closeTimer = setTimeout(() => {
      const side = srcGone() ? 'destination' : 'source';
      link.failure ??= { side, offset: pair.forwardBytes, message: `the ${side} did not close its connection within ${ms} ms after the other side closed` };
      if (!srcGone()) src.destroy();
      if (!dstGone()) dst.destroy();
    }, ms);
  };

  const done = Promise.all([pair.sourceGone, new Promise<void>((resolve) => dst.once('close', () => resolve()))]);

  const sourceClosed = (how: 'fin' | 'error', e?: unknown): void => {
    if (source.closed !== 'open') return;
    const at = pair.forwardBytes;
    source.closed = how;
    source.offset = at;
    source.error = e === undefined ? null : errCode(e);
    // The records still buffered in the side decoder are noted first: a listener timing the
    // switchover (migrate's wire downtime) must see them before the close, not after it.
    live.flush();
    note({ type: 'closed', side: 'source', offset: at, how, ...(source.error ? { error: source.error } : {}) });
    const eof = live.eofOffset ?? tail.trailerEof(at);
    if (how === 'error') {
      link.failure ??= { side: 'source', offset: at, message: `the source connection failed (${source.error}) at forward offset ${at}${eof === undefined ? ', before the EOF record' : ''}` };
    } else if (eof === undefined && !live.stopped) {
      // The decoder is up to date and saw no EOF (when it stopped early, the tee decides later).
      link.failure ??= { side: 'source', offset: at, message: `the source closed the connection at forward offset ${at}, before the EOF record` };
    }
    // What the destination would see with the source gone: the end of its input.
    if (!dstGone()) dst.end();
    armCloseTimer();
  };
  /** The migration failed: the source's main connection goes, so its migration fails. */
  const closeMainSource = (): void => {
    if (srcGone()) return;
    pair.sourceDone();
    source.closed = 'closed-by-proxy';
    source.offset = pair.forwardBytes;
    src.destroy();
  };
  // A multifd channel that fails closes the main channel's source too (the channels closed
  // their own sources already); the channels ask whether the main stream reached its EOF.
  link.onFail = () => closeMainSource();
  link.mainLoaded = () => eofDelivered(deliveredAtClose ?? pair.delivered());
  if (link.failure) closeMainSource();
  const destinationClosed = (how: 'fin' | 'error', e?: unknown): void => {
    if (destination.closed !== 'open') return;
    deliveredAtClose = pair.delivered();
    destination.closed = how;
    destination.offset = deliveredAtClose;
    destination.error = e === undefined ? null : errCode(e);
    pair.destinationDone();
    // Nothing more goes to a destination that closed: finish our side too (an error has destroyed it already).
    if (how === 'fin') dst.end();
    note({ type: 'closed', side: 'destination', offset: deliveredAtClose, how, ...(destination.error ? { error: destination.error } : {}) });
    if (eofDelivered(deliveredAtClose)) {
      // Normal end: the destination loaded the stream and closed. Keep reading the
      // source to its end (the vmdesc trailer follows EOF) and pass the FIN back.
      if (!srcGone()) src.end();
      pair.resumeSource();
    } else {
      link.failure ??= {
        side: 'destination', offset: deliveredAtClose,
        message: `the destination ${how === 'fin' ? 'closed the connection' : `connection failed (${destination.error})`} at forward offset ${deliveredAtClose}, before the EOF record reached it`,
      };
      closeMainSource();
      channels.closeSources();
    }
    armCloseTimer();
  };

  pair.listen({
    forwarded: (chunk) => { tail.push(chunk); live.feed(chunk); },
    returned: (chunk) => rp.push(chunk),
    sourceEnded: sourceClosed,
    // With the source gone, the destination sees the end of its input.
    sourceClosed: () => { if (!dstGone()) dst.end(); },
    destinationEnded: destinationClosed,
    teeFailed: (e) => { teeError ??= e; },
  });

  const onAbort = (): void => {
    link.failure ??= { side: 'stream', offset: pair.forwardBytes, message: `aborted at forward offset ${pair.forwardBytes}` };
    src.destroy();
    dst.destroy();
    channels.destroyAll();
  };
  opts.signal?.addEventListener('abort', onAbort, { once: true });

  const interval = opts.progressIntervalMs ?? 1000;
  const ticker = interval > 0
    ? setInterval(() => note({ type: 'progress', forwardBytes: pair.forwardBytes, returnBytes: pair.returnBytes, seconds: (Date.now() - t0) / 1000, decodedRecords: records, multifdBytes: channels.bytes }), interval)
    : undefined;
  ticker?.unref();

  pair.start(dst, teeOut);
  await done;
  if (closeTimer) clearTimeout(closeTimer);
  // The main channel finished: no more channels can come. The proxy's exit waits for every
  // multifd channel to close (bounded by the close timeout; a failed migration has closed
  // their sources already, so their destinations see the end and close).
  await closeListener();
  const late = await channels.settle(opts.closeTimeoutMs ?? 30_000);
  if (late) link.failure ??= late;
  if (ticker) clearInterval(ticker);
  opts.signal?.removeEventListener('abort', onAbort);
  endVfioSection();

  const sourceClean = source.closed === 'fin';
  const liveTally = live.finish(sourceClean && link.failure === null);
  const liveReport = { ...liveTally, complete: live.complete, stopped: live.stopped ?? null };
  let eof: ProxyReport['eof'] = live.eofOffset !== undefined ? { offset: live.eofOffset, via: 'live' } : null;

  // The tee: closed, decoded in full when live decoding could not, kept only when complete.
  let tee: ProxyReport['tee'] = null;
  if (teeFile && teeOut && teeTmp && opts.tee) {
    await teeFile.end().catch((e: unknown) => { teeError ??= e; });
    tee = { path: opts.tee, bytes: teeOut.bytesWritten, kept: false, why: '', report: null, error: null };
    if (teeError) tee.error = { code: errCode(teeError), message: `writing the tee file failed: ${(teeError as Error).message ?? String(teeError)}`, offset: teeOut.bytesWritten };
    else if (!live.complete && sourceClean && link.failure === null) {
      try {
        const full = tallyOf(await inspectStreamFile(teeTmp));
        tee.report = full;
        if (full.eofOffset !== null && !eof) eof = { offset: full.eofOffset, via: 'tee' };
      } catch (e) {
        tee.error = { code: e instanceof MigbridgeError ? e.code : errCode(e), message: e instanceof Error ? e.message : String(e), offset: e instanceof MigbridgeError ? (e.offset ?? null) : null };
      }
    }
  }
  const { forwardBytes, returnBytes } = pair;
  if (!eof && sourceClean) {
    const t = tail.trailerEof(forwardBytes);
    if (t !== undefined) eof = { offset: t, via: 'trailer' };
  }

  if (!link.failure) {
    if (!sourceClean) link.failure = { side: 'source', offset: source.offset, message: `the source connection ended with ${source.error ?? source.closed} at forward offset ${source.offset}` };
    else if (!eof && rp.shutStatus !== 0) link.failure = { side: 'stream', offset: forwardBytes, message: `the source closed cleanly at ${forwardBytes} but no EOF record was established (live decoding: ${live.stopped?.message ?? 'incomplete'}; give --vmdesc or --tee)` };
    else if (destination.closed === 'open') link.failure = { side: 'destination', offset: pair.delivered(), message: 'the destination did not close its connection' };
  }
  // The tees (main and multifd channels) are kept together or not at all.
  const channelTeeProblem = channels.teeProblem();
  await channels.finishTees(tee !== null && !teeError && !link.failure && !channelTeeProblem);
  if (tee) {
    if (teeError) tee.why = tee.error!.message;
    else if (link.failure) tee.why = `not kept: ${link.failure.message}`;
    else if (channelTeeProblem) tee.why = `not kept: ${channelTeeProblem}`;
    else {
      try {
        await teeFile!.commit();
        tee.kept = true;
        tee.why = `complete stream (${eof ? `EOF at ${eof.offset}` : 'the destination sent SHUT 0'}, source closed cleanly)`;
      } catch (e) {
        tee.error = { code: errCode(e), message: e instanceof Error ? e.message : String(e), offset: teeOut!.bytesWritten };
        tee.why = tee.error.message;
      }
    }
    if (!tee.kept) await teeFile!.abort();
  }

  const report: ProxyReport = {
    ok: link.failure === null,
    listen: around.listening,
    to: formatEndpoint(opts.to),
    seconds: (Date.now() - t0) / 1000,
    forwardBytes,
    deliveredBytes: deliveredAtClose ?? pair.delivered(),
    returnPath: { ...rp.result(), bytes: returnBytes },
    source,
    destination,
    eof,
    destinationShut: rp.shutStatus ?? null,
    live: liveReport,
    tee,
    multifd: channels.reports(),
    multifdBytes: channels.bytes,
    rejected: [...router.rejected],
    failure: link.failure,
  };
  if (link.failure) throw new ProxyFailedError(report, link.failure);
  return report;
}
