// The forwarding of one proxied connection pair, the same for the main channel (proxy.ts)
// and every multifd channel (proxy-multifd.ts): source -> destination bytes, teed and then
// handed to the caller's side decoder; destination -> source bytes (QEMU's return path);
// backpressure (the source waits while the destination or the tee is full, the destination
// while the source is); and where each side's socket is. What a close means, a normal end or
// a failure, is the caller's to decide: the hooks hear each end and close.
import type * as net from 'node:net';
import type { Writable } from 'node:stream';

/** A side's socket: `open`; `done` (ended, failed or closed by the proxy: nothing more is written to it); `closed` (its 'close' came). */
export type SocketState = 'open' | 'done' | 'closed';

export interface LinkHooks {
  /** A forward chunk, after it went to the destination and the tee (decode it here). */
  forwarded(chunk: Buffer): void;
  /** A return-path chunk, before it goes to the source. */
  returned?(chunk: Buffer): void;
  /**
   * The source ended its side ('fin') or its connection failed ('error'); also called with
   * 'error' when its socket closes, so a hook must ignore a second call.
   */
  sourceEnded(how: 'fin' | 'error', e?: unknown): void;
  /** The source's socket closed (after sourceEnded). */
  sourceClosed?(): void;
  /** The same for the destination. */
  destinationEnded(how: 'fin' | 'error', e?: unknown): void;
  destinationClosed?(): void;
  /** The tee failed: the migration goes on without it. */
  teeFailed(e: unknown): void;
}

export class ProxyLink {
  forwardBytes = 0;
  returnBytes = 0;
  src: SocketState = 'open';
  dst: SocketState = 'open';
  private destination: net.Socket | undefined;
  private hooks: LinkHooks | undefined;
  /** Why the source is paused. */
  private readonly holds = new Set<'destination' | 'tee'>();
  /** The destination is paused because the source is full. */
  private returnHeld = false;
  private teeBroken = false;
  /** A source error before start() (the destination was being connected). */
  private earlyError: unknown;
  /** Settles when the source's socket has closed. */
  readonly sourceGone: Promise<void>;

  /** Watches `source` from now on (it may fail while the destination is being connected); paused until start(). */
  constructor(readonly source: net.Socket) {
    source.on('error', (e) => { this.earlyError ??= e; });
    this.sourceGone = new Promise((resolve) => source.once('close', () => {
      this.src = 'closed';
      if (this.hooks) this.sourceClosedNow(this.hooks);
      resolve();
    }));
  }

  private sourceClosedNow(hooks: LinkHooks): void {
    hooks.sourceEnded('error', this.earlyError ?? new Error('closed'));
    hooks.sourceClosed?.();
  }

  /** The hooks from now on; a source error or close that came before is told at once. */
  listen(hooks: LinkHooks): void {
    this.hooks = hooks;
    if (this.earlyError !== undefined) hooks.sourceEnded('error', this.earlyError);
    if (this.src === 'closed') this.sourceClosedNow(hooks);
  }

  /** Forward bytes handed to the destination's socket (less what still sits in its write queue). */
  delivered(): number {
    return this.forwardBytes - (this.dst === 'open' && this.destination ? this.destination.writableLength : 0);
  }

  /** Nothing more goes to the destination: it ended or failed (stops holding the source back). */
  destinationDone(): void {
    if (this.dst === 'open') this.dst = 'done';
    this.holds.delete('destination');
  }

  /** Nothing more goes to the source. */
  sourceDone(): void {
    if (this.src === 'open') this.src = 'done';
  }

  resumeSource(): void {
    if (this.holds.size === 0 && this.src === 'open') this.source.resume();
  }

  private resumeDestination(): void {
    if (!this.returnHeld && this.dst === 'open') this.destination?.resume();
  }

  /** Wires both directions to `dst` and starts reading (both sockets were paused until now); after listen(). */
  start(dst: net.Socket, tee: Writable | undefined): void {
    const src = this.source;
    const hooks = this.hooks!;
    this.destination = dst;
    tee?.on('error', (e) => {
      this.teeBroken = true;
      hooks.teeFailed(e);
      this.holds.delete('tee');
      this.resumeSource();
    });
    src.on('data', (chunk: Buffer) => {
      this.forwardBytes += chunk.length;
      if (tee && !this.teeBroken && !tee.write(chunk)) {
        this.holds.add('tee');
        src.pause();
        tee.once('drain', () => { this.holds.delete('tee'); this.resumeSource(); });
      }
      if (this.dst === 'open' && !dst.write(chunk)) {
        this.holds.add('destination');
        src.pause();
      }
      hooks.forwarded(chunk);
    });
    dst.on('drain', () => { this.holds.delete('destination'); this.resumeSource(); });
    dst.on('data', (chunk: Buffer) => {
      this.returnBytes += chunk.length;
      hooks.returned?.(chunk);
      if (this.src === 'open' && !src.write(chunk)) {
        this.returnHeld = true;
        dst.pause();
      }
    });
    src.on('drain', () => { this.returnHeld = false; this.resumeDestination(); });
    src.on('end', () => hooks.sourceEnded('fin'));
    src.on('error', (e) => hooks.sourceEnded('error', e));
    dst.on('end', () => hooks.destinationEnded('fin'));
    dst.on('error', (e) => hooks.destinationEnded('error', e));
    dst.once('close', () => {
      hooks.destinationEnded('error', new Error('closed'));
      this.dst = 'closed';
      hooks.destinationClosed?.();
    });
    if (this.earlyError !== undefined) hooks.sourceEnded('error', this.earlyError);
    if (this.src === 'open') src.resume();
    dst.resume();
  }
}
