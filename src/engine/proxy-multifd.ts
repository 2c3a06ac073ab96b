// The proxy's side channels: with the `multifd` capability a source QEMU opens, besides the
// main migration channel, one connection per multifd channel to the same address, and the
// destination tells them apart by their first 4 bytes (`QEVM` main, 0x11223344 multifd), in
// whatever order they come. Here: the router that peeks each accepted connection's first
// 4 bytes (and puts them back), and the forwarding of multifd channels, each to its own
// new connection to the destination, with backpressure, an optional tee and a decoder on
// the side that reads packet headers only (so it never holds bytes back and needs no queue).
//
// A multifd channel failing mid-migration fails the migration like the main channel does:
// every source connection is closed, so the source's migration fails instead of
// completing into nothing, and the report names the channel and its offset.
import * as net from 'node:net';
import { MigbridgeError, errorCode as errCode } from '../errors.js';
import { MULTIFD_MAGIC, MultifdDecoder, MultifdTallier, type MultifdTally } from '../qemu/multifd.js';
import { StreamedOutput } from '../util/atomic-file.js';
import { type Endpoint, type Listener, connectEndpoint, formatEndpoint } from '../util/endpoint.js';
import { ProxyLink } from './proxy-link.js';
import type { DecodeStop } from './proxy-decode.js';
import type { ProxyFailure, ProxyNote, SideResult } from './proxy-types.js';

/** `QEVM`: the first 4 bytes of the main migration channel. */
export const MAIN_CHANNEL_MAGIC = 0x5145564d;


/** A connection that was neither the main channel nor a multifd channel, closed unforwarded. */
export interface RejectedConnection {
  /** Accept order among all connections (0 = first). */
  connection: number;
  /** Its first bytes (at most 4), hex. */
  firstBytes: string;
  reason: string;
}

/**
 * Accepts every connection on the listening socket, reads until it has 4 bytes, puts them
 * back (`unshift`) and hands the still paused socket on: `QEVM` to `main` (the first one
 * only), the multifd magic to `multifd`; anything else is closed and listed in `rejected`.
 */
export class ConnectionRouter {
  readonly rejected: RejectedConnection[] = [];
  private count = 0;
  private readonly pending = new Map<net.Socket, { connection: number; bytes: () => Buffer }>();
  private mainTaken = false;

  constructor(
    listener: Listener,
    private readonly routes: { main: (s: net.Socket, connection: number) => void; multifd: (s: net.Socket, connection: number) => void; note: (n: ProxyNote) => void },
  ) {
    listener.onConnection((s: net.Socket) => this.classify(s, this.count++));
  }

  private reject(s: net.Socket, connection: number, head: Buffer, reason: string): void {
    const r: RejectedConnection = { connection, firstBytes: head.subarray(0, 4).toString('hex'), reason };
    this.rejected.push(r);
    this.routes.note({ type: 'rejected', ...r });
    s.destroy();
  }

  private classify(s: net.Socket, connection: number): void {
    const parts: Buffer[] = [];
    let n = 0;
    const head = (): Buffer => Buffer.concat(parts);
    this.pending.set(s, { connection, bytes: head });
    // Stays attached: errors after routing are also handled by the forwarders' own listeners.
    s.on('error', () => undefined);
    const cleanup = (): void => {
      s.off('data', onData);
      s.off('end', onEnd);
      s.off('error', onError);
      this.pending.delete(s);
    };
    const onData = (chunk: Buffer): void => {
      parts.push(chunk);
      n += chunk.length;
      if (n < 4) return;
      s.pause();
      cleanup();
      const bytes = head();
      s.unshift(bytes);
      const magic = bytes.readUInt32BE(0);
      if (magic === MAIN_CHANNEL_MAGIC && !this.mainTaken) {
        this.mainTaken = true;
        this.routes.main(s, connection);
      } else if (magic === MULTIFD_MAGIC) {
        this.routes.multifd(s, connection);
      } else {
        this.reject(s, connection, bytes, magic === MAIN_CHANNEL_MAGIC ? 'a second main channel (QEVM)' : 'neither a main (QEVM) nor a multifd (0x11223344) channel');
      }
    };
    const onEnd = (): void => {
      cleanup();
      this.reject(s, connection, head(), `closed after ${n} bytes, before its first 4`);
    };
    const onError = (e: unknown): void => {
      cleanup();
      this.reject(s, connection, head(), `failed (${errCode(e)}) after ${n} bytes, before its first 4`);
    };
    s.on('data', onData);
    s.once('end', onEnd);
    s.once('error', onError);
    s.resume();
  }

  /** Closes the connections not classified yet (the migration is over without them). */
  closePending(why: string): void {
    for (const [s, p] of [...this.pending]) {
      this.pending.delete(s);
      this.reject(s, p.connection, p.bytes(), why);
    }
  }
}

/** One multifd channel as the proxy saw it. */
export interface MultifdChannelReport extends Omit<MultifdTally, 'decodedBytes'> {
  /** Accept order among all connections to the listening socket. */
  connection: number;
  /** Source -> destination: bytes received from the source on this channel. */
  bytes: number;
  /** Of those, bytes handed to the destination's socket. */
  deliveredBytes: number;
  /** Destination -> source (QEMU sends nothing back on multifd channels). */
  returnBytes: number;
  /** Bytes the side decoder went through (= bytes unless it stopped). */
  decodedBytes: number;
  /** Why and where decoding stopped early, or null. */
  decodeStopped: DecodeStop | null;
  source: SideResult;
  destination: SideResult;
  /** Both sides closed. */
  closed: boolean;
  /** This channel's tee (`TEE.multifd-<channel>`). */
  tee: { path: string; bytes: number; kept: boolean; error: string | null } | null;
}

/** What a channel needs from the proxy around it. */
export interface ChannelHost {
  /** The destination: each channel opens its own connection there, as QEMU's channels do. */
  to: Endpoint;
  connectWaitMs: number;
  pageSize?: number;
  note: (n: ProxyNote) => void;
  /** Records the first failure and closes every source connection. */
  fail: (f: ProxyFailure) => void;
  /** Did the main channel's EOF reach the destination (its load is complete)? */
  mainLoaded: () => boolean;
}

/**
 * A multifd channel's own connection to the destination, with TCP_NODELAY as QEMU sets it on
 * its multifd channels (see util/endpoint.ts). An inherited fd is one connection only: it
 * carries the main channel and cannot be opened again for a channel.
 */
async function connectChannel(host: ChannelHost): Promise<net.Socket> {
  if (host.to.kind === 'fd') throw new MigbridgeError('EPROXY_DESTINATION', `${formatEndpoint(host.to)} is a single connection (the main channel's); multifd channels need a unix: or tcp: destination`);
  return connectEndpoint(host.to, { what: '--to', waitMs: host.connectWaitMs, allowHalfOpen: true, noDelay: true });
}

interface ChannelTee {
  output: StreamedOutput;
  out: StreamedOutput['out'];
  error: unknown;
}

class MultifdChannel {
  private dst: net.Socket | undefined;
  private tee: ChannelTee | undefined;
  private teeOpenError: unknown;
  private readonly decoder: MultifdDecoder;
  private readonly tally = new MultifdTallier();
  private decodeStop: DecodeStop | null = null;
  private deliveredAtClose: number | undefined;
  readonly source: SideResult = { closed: 'open', offset: 0, error: null };
  readonly destination: SideResult = { closed: 'open', offset: 0, error: null };
  /** The forwarding, and where each side's socket is (the destination's is 'closed' when it never connected). */
  private readonly link: ProxyLink;
  private resolveDone!: () => void;
  readonly done = new Promise<void>((r) => { this.resolveDone = r; });
  private teePath: string | null = null;
  private teeKept = false;

  constructor(readonly connection: number, src: net.Socket, private readonly host: ChannelHost) {
    this.decoder = new MultifdDecoder({ ...(host.pageSize ? { pageSize: host.pageSize } : {}), onEvent: (ev) => this.onEvent(ev) });
    // Watched from the start: the source may fail while the destination is being connected.
    this.link = new ProxyLink(src);
    this.link.listen({
      forwarded: (chunk) => this.decode(chunk),
      sourceEnded: (how, e) => this.sourceClosed(how, e),
      sourceClosed: () => this.maybeDone(),
      destinationEnded: (how, e) => this.destinationClosed(how, e),
      destinationClosed: () => this.maybeDone(),
      teeFailed: (e) => { this.tee!.error ??= e; },
    });
  }

  private get bytes(): number {
    return this.link.forwardBytes;
  }

  /** Multifd channel id from the init packet, once decoded. */
  get channel(): number | null {
    return this.decoder.init?.channelId ?? null;
  }

  private get label(): string {
    return this.channel !== null ? `multifd channel ${this.channel}` : `multifd connection #${this.connection}`;
  }

  private onEvent(ev: Parameters<MultifdTallier['add']>[0]): void {
    this.tally.add(ev);
    if (ev.type === 'init') this.host.note({ type: 'multifd-channel', connection: this.connection, channel: ev.init.channelId, uuid: ev.init.uuid });
  }

  /** Connects the destination side and opens the tee, then forwards. */
  async start(teeBase: string | undefined): Promise<void> {
    // The tee first, the connection last: from the connect to wire() nothing is awaited, so
    // the destination socket is never without an 'error' listener (a destination dying in
    // that gap crashed the proxy with an unhandled ECONNRESET).
    const [tee] = await Promise.allSettled([teeBase !== undefined ? openChannelTee(teeBase) : Promise.resolve(undefined)]);
    if (tee.status === 'fulfilled') this.tee = tee.value;
    else this.teeOpenError = tee.reason;
    const [dst] = await Promise.allSettled([connectChannel(this.host)]);
    if (dst.status === 'rejected') {
      this.link.dst = 'closed';
      this.destination.closed = 'error';
      this.destination.error = errCode(dst.reason);
      this.host.fail({
        side: 'destination', channel: null, connection: this.connection, offset: 0,
        message: `cannot connect to the destination ${formatEndpoint(this.host.to)} for multifd connection #${this.connection}: ${dst.reason instanceof Error ? dst.reason.message : String(dst.reason)}`,
      });
      this.closeSource();
      this.maybeDone();
      return;
    }
    this.dst = dst.value;
    if (this.link.src !== 'open') {
      // The source failed (or the proxy closed it) while connecting: nothing to forward.
      // (A source's FIN cannot come first: its bytes, and so its end, are not read yet.)
      this.destination.closed = 'closed-by-proxy';
      this.link.dst = 'closed';
      this.dst.destroy();
      this.maybeDone();
      return;
    }
    this.host.note({ type: 'multifd-connected', connection: this.connection });
    this.link.start(this.dst, this.tee?.out);
  }

  /** Header-only decoding, done in line: it costs a few comparisons per chunk and no copy of payloads. */
  private decode(chunk: Buffer): void {
    if (this.decodeStop) return;
    try {
      this.decoder.push(chunk);
    } catch (e) {
      this.stopDecoding(e);
    }
  }

  private stopDecoding(e: unknown): void {
    this.decodeStop = {
      offset: e instanceof MigbridgeError && e.offset !== undefined ? e.offset : this.decoder.offset, reason: 'error',
      code: e instanceof MigbridgeError ? e.code : 'ESTREAM_FORMAT', message: e instanceof Error ? e.message : String(e),
    };
    this.host.note({ type: 'multifd-decode-stopped', connection: this.connection, channel: this.channel, stop: this.decodeStop });
  }

  private sourceClosed(how: 'fin' | 'error', e?: unknown): void {
    if (this.source.closed !== 'open') return;
    this.source.closed = how;
    this.source.offset = this.bytes;
    this.source.error = e === undefined ? null : errCode(e);
    this.host.note({ type: 'multifd-closed', connection: this.connection, channel: this.channel, side: 'source', offset: this.bytes, how, ...(this.source.error ? { error: this.source.error } : {}) });
    if (how === 'error') {
      this.host.fail({ side: 'source', channel: this.channel, connection: this.connection, offset: this.bytes, message: `the source's ${this.label} failed (${this.source.error}) at channel offset ${this.bytes}` });
    } else if (!this.decodeStop) {
      try {
        this.decoder.end();
      } catch (err) {
        this.stopDecoding(err);
        this.host.fail({ side: 'source', channel: this.channel, connection: this.connection, offset: this.bytes, message: `the source closed ${this.label} at channel offset ${this.bytes}, inside the packet that started at ${this.decoder.currentPacketOffset}` });
      }
    }
    // What the destination would see with the source gone: the end of this channel.
    if (this.dst && this.link.dst === 'open') this.dst.end();
  }

  private destinationClosed(how: 'fin' | 'error', e?: unknown): void {
    if (this.destination.closed !== 'open') return;
    const dst = this.dst!;
    this.deliveredAtClose = this.link.delivered();
    this.destination.closed = how;
    this.destination.offset = this.deliveredAtClose;
    this.destination.error = e === undefined ? null : errCode(e);
    this.link.destinationDone();
    if (how === 'fin') dst.end();
    this.host.note({ type: 'multifd-closed', connection: this.connection, channel: this.channel, side: 'destination', offset: this.deliveredAtClose, how, ...(this.destination.error ? { error: this.destination.error } : {}) });
    // Normal: the source ended this channel cleanly first, or the destination has loaded the
    // whole main stream (it closes its channels once done).
    const sourceEndedCleanly = this.source.closed === 'fin' && (this.decodeStop !== null || this.decoder.atBoundary) && this.deliveredAtClose === this.bytes;
    if (sourceEndedCleanly || this.host.mainLoaded()) {
      if (this.link.src === 'open') this.link.source.end();
      this.link.resumeSource();
      return;
    }
    this.host.fail({
      side: 'destination', channel: this.channel, connection: this.connection, offset: this.deliveredAtClose,
      message: `the destination ${how === 'fin' ? 'closed' : `connection failed (${this.destination.error}) on`} ${this.label} at channel offset ${this.deliveredAtClose}, before the migration's EOF reached it`,
    });
  }

  /** The migration failed: close the source side so the source QEMU's migration fails too. */
  closeSource(): void {
    if (this.link.src !== 'open') return;
    this.link.sourceDone();
    if (this.source.closed === 'open') {
      this.source.closed = 'closed-by-proxy';
      this.source.offset = this.bytes;
    }
    this.link.source.destroy();
    if (this.dst && this.link.dst === 'open') this.dst.end();
  }

  /** Gives up on a channel that does not close: both sides closed by the proxy. */
  destroy(): void {
    this.closeSource();
    if (this.dst && this.link.dst === 'open') {
      if (this.destination.closed === 'open') {
        this.destination.closed = 'closed-by-proxy';
        this.destination.offset = this.link.delivered();
      }
      this.link.destinationDone();
      this.dst.destroy();
    }
  }

  /** Which side is still open (for a close timeout), or null. */
  get openSide(): 'source' | 'destination' | null {
    return this.link.src !== 'closed' ? 'source' : this.dst && this.link.dst !== 'closed' ? 'destination' : null;
  }

  get forwarded(): number {
    return this.bytes;
  }

  private maybeDone(): void {
    if (this.link.src === 'closed' && (this.link.dst === 'closed' || (!this.dst && this.destination.closed !== 'open'))) this.resolveDone();
  }

  /** Closes the tee; renames it to `path` when `keep`, removes it otherwise. */
  async finishTee(path: string | null, keep: boolean): Promise<void> {
    const tee = this.tee;
    this.teePath = path;
    if (!tee) return;
    await tee.output.end().catch((e: unknown) => { tee.error ??= e; });
    if (keep && path !== null && !tee.error) {
      try {
        await tee.output.commitAs(path);
        this.teeKept = true;
      } catch (e) {
        tee.error = e;
      }
    } else {
      await tee.output.abort();
    }
  }

  get teeProblem(): string | null {
    if (this.teeOpenError !== undefined) return `cannot create the tee file for ${this.label}: ${errCode(this.teeOpenError)}`;
    if (this.tee?.error !== undefined) return `writing the tee file of ${this.label} failed: ${errCode(this.tee.error)}`;
    return null;
  }

  report(): MultifdChannelReport {
    const t = this.tally.result(this.decodeStop ? this.decodeStop.offset : this.decoder.offset);
    const tee = this.tee || this.teeOpenError !== undefined
      ? { path: this.teePath ?? '', bytes: this.tee?.out.bytesWritten ?? 0, kept: this.teeKept, error: this.teeProblem }
      : null;
    const { decodedBytes, ...rest } = t;
    return {
      ...rest,
      connection: this.connection,
      bytes: this.bytes,
      deliveredBytes: this.deliveredAtClose ?? (this.dst ? this.link.delivered() : 0),
      returnBytes: this.link.returnBytes,
      decodedBytes,
      decodeStopped: this.decodeStop,
      source: { ...this.source },
      destination: { ...this.destination },
      closed: this.link.src === 'closed' && (this.link.dst === 'closed' || !this.dst),
      tee,
    };
  }
}

async function openChannelTee(base: string): Promise<ChannelTee> {
  // The same deep write queue as the main channel's tee.
  const output = await StreamedOutput.create(base, 8 << 20);
  return { output, out: output.out, error: undefined };
}

/** The multifd channels of one migration through the proxy. */
export class MultifdChannels {
  private readonly channels: MultifdChannel[] = [];
  private readonly started: Promise<void>[] = [];

  /** `teeBase`: the main tee's path; each channel tees to `teeBase.multifd-<channel>`. */
  constructor(private readonly host: ChannelHost, private readonly teeBase: string | undefined) {}

  add(src: net.Socket, connection: number): void {
    const ch = new MultifdChannel(connection, src, this.host);
    this.channels.push(ch);
    // The channel id is only known once its init packet went through: the temp name uses the connection.
    const base = this.teeBase !== undefined ? `${this.teeBase}.multifd-conn${connection}` : undefined;
    this.started.push(ch.start(base));
    this.host.note({ type: 'multifd-accepted', connection });
  }

  get count(): number {
    return this.channels.length;
  }

  get bytes(): number {
    return this.channels.reduce((n, c) => n + c.forwarded, 0);
  }

  /** Closes both sides of every channel (aborted, or the main channel never got going). */
  destroyAll(): void {
    for (const c of this.channels) c.destroy();
  }

  /** Closes every channel's source side (the migration failed). */
  closeSources(): void {
    for (const c of this.channels) c.closeSource();
  }

  /**
   * Waits until every channel has closed on both sides. After `timeoutMs` the remaining ones
   * are closed by the proxy and the first is returned as a failure (null: all closed).
   */
  async settle(timeoutMs: number): Promise<ProxyFailure | null> {
    await Promise.all(this.started);
    let timer: NodeJS.Timeout | undefined;
    const all = Promise.all(this.channels.map((c) => c.done)).then(() => true);
    const timedOut = new Promise<boolean>((r) => { timer = setTimeout(() => r(false), timeoutMs); });
    const ok = await Promise.race([all, timedOut]);
    clearTimeout(timer);
    if (ok) return null;
    let failure: ProxyFailure | null = null;
    for (const c of this.channels) {
      const side = c.openSide;
      if (side === null) continue;
      failure ??= { side, channel: c.channel, connection: c.connection, offset: c.forwarded, message: `the ${side} did not close multifd ${c.channel !== null ? `channel ${c.channel}` : `connection #${c.connection}`} within ${timeoutMs} ms after the main channel closed` };
      c.destroy();
    }
    await all;
    return failure;
  }

  /** Final tee names: `BASE.multifd-<channel>` (by connection when the id is unknown or taken twice). */
  private teePaths(): (string | null)[] {
    if (this.teeBase === undefined) return this.channels.map(() => null);
    const seen = new Map<number, number>();
    for (const c of this.channels) if (c.channel !== null) seen.set(c.channel, (seen.get(c.channel) ?? 0) + 1);
    return this.channels.map((c) => c.channel !== null && seen.get(c.channel) === 1
      ? `${this.teeBase}.multifd-${c.channel}`
      : `${this.teeBase}.multifd-conn${c.connection}`);
  }

  /** The first tee problem of any channel, or null. */
  teeProblem(): string | null {
    for (const c of this.channels) if (c.teeProblem) return c.teeProblem;
    return null;
  }

  /** Keeps every channel tee under its final name (`keep`), or removes them all. */
  async finishTees(keep: boolean): Promise<void> {
    const paths = this.teePaths();
    await Promise.all(this.channels.map((c, i) => c.finishTee(paths[i]!, keep)));
  }

  reports(): MultifdChannelReport[] {
    return this.channels.map((c) => c.report()).sort((a, b) => (a.channel ?? 1e9) - (b.channel ?? 1e9) || a.connection - b.connection);
  }
}

