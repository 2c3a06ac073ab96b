// The library's QMP client: one connection to a QEMU monitor socket (unix path). It reads
// the greeting (QEMU's version), negotiates capabilities, runs commands one id each with a
// per-command timeout, keeps every event QEMU sends (MIGRATION, MIGRATION_PASS, STOP,
// RESUME, ...) and can hand QEMU a file descriptor with a command (SCM_RIGHTS, for `getfd`
// and `add-fd`). Every wait is bounded; failures are QmpError with a code saying which kind.
import type { Socket } from 'node:net';
import { sendWithFd } from '../native/sys.js';
import { connectUnixWhenListening } from '../util/unix-connect.js';
import { QmpError } from './errors.js';
import { MigbridgeError } from '../errors.js';

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

/** QEMU's version from the greeting. */
export interface QemuVersionInfo {
  major: number;
  minor: number;
  micro: number;
  /** Distribution suffix, e.g. "Debian 1:10.0.2+ds-2". */
  package: string;
}

export interface QmpConnectOptions {
  /** Name used in errors (default: the socket path). */
  label?: string;
  /** Bound on connecting (QEMU not listening yet is retried), the greeting and qmp_capabilities. */
  connectTimeoutMs?: number;
  /** Default bound on each command (default 30 s). */
  commandTimeoutMs?: number;
}

export interface QmpCommandOptions {
  /** Overrides the client's default command timeout. */
  timeoutMs?: number;
}

export interface QmpWaitOptions {
  /** Only events at this index of `events` or later count (see `eventCount`). */
  since?: number;
  /** Omitted: no timeout; the wait still ends when the connection does. */
  timeoutMs?: number;
  /** What is awaited, for the timeout's message. */
  what: string;
}

interface Pending {
  command: string;
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

interface EventWaiter {
  match: (e: QmpEvent) => boolean;
  resolve: (e: QmpEvent) => void;
  reject: (err: Error) => void;
}

interface QmpMessage {
  QMP?: { version?: { qemu?: { major: number; minor: number; micro: number }; package?: string } };
  return?: unknown;
  error?: { class: string; desc: string };
  event?: string;
  id?: number;
}

/** A monitor line longer than this is not QMP: the connection is dropped (bounded memory). */
const MAX_LINE = 16 * 1024 * 1024;
const DEFAULT_COMMAND_TIMEOUT_MS = 30_000;

/** The fd of a connected net.Socket (libuv's handle exposes it; there is no public getter). */
function socketFd(socket: Socket): number {
  const fd = (socket as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) throw new MigbridgeError('EQMP_FDPASS', 'the QMP socket has no file descriptor (fd passing needs a unix socket Node exposes)');
  return fd;
}

export class QmpClient {
  /** Every event received, in order. */
  readonly events: QmpEvent[] = [];
  /** QEMU's version as its greeting announced it. */
  version: QemuVersionInfo = { major: 0, minor: 0, micro: 0, package: '' };
  readonly label: string;
  readonly path: string;
  readonly commandTimeoutMs: number;
  private readonly pending = new Map<number, Pending>();
  private readonly eventWaiters = new Set<EventWaiter>();
  private readonly listeners = new Set<(e: QmpEvent) => void>();
  private nextId = 1;
  private buffer = '';
  private closedError: QmpError | null = null;
  private greetingWaiter: { resolve: () => void; reject: (e: Error) => void } | null = null;
  private greeted = false;

  private constructor(private readonly socket: Socket, path: string, label: string, commandTimeoutMs: number) {
    this.path = path;
    this.label = label;
    this.commandTimeoutMs = commandTimeoutMs;
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.onData(chunk));
    socket.on('error', (err) => this.failAll(this.closed(`connection failed: ${err.message}`, err)));
    socket.on('close', () => this.failAll(this.closed('connection closed by QEMU')));
  }

  /** Connects to the monitor at `path`, reads the greeting and negotiates capabilities. */
  static async connect(path: string, opts: QmpConnectOptions = {}): Promise<QmpClient> {
    const label = opts.label ?? path;
    const timeoutMs = opts.connectTimeoutMs ?? 10_000;
    const deadline = performance.now() + timeoutMs;
    const socket = await connectUnixWhenListening(path, { waitMs: timeoutMs }).catch((e: NodeJS.ErrnoException) => {
      throw new QmpError('EQMP_CONNECT', `${label}: cannot connect to the QMP socket ${path}: ${e.message}`, { path, label, cause: e });
    });
    const client = new QmpClient(socket, path, label, opts.commandTimeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS);
    try {
      await client.greeting(Math.max(1, Math.round(deadline - performance.now())));
      await client.execute('qmp_capabilities', undefined, { timeoutMs: Math.max(1, Math.round(deadline - performance.now())) });
    } catch (e) {
      client.close();
      throw e;
    }
    return client;
  }

  /** How many events arrived so far: pass it as `since` to wait only for later ones. */
  get eventCount(): number {
    return this.events.length;
  }

  /** Runs one command; resolves with its `return`, rejects with QmpError (QEMU's class and desc, a timeout, a closed socket). */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts: QmpCommandOptions = {}): Promise<T> {
    return this.send<T>(command, args, opts, null);
  }

  /**
   * Runs one command with `fd` attached (SCM_RIGHTS on the command's bytes), as `getfd`
   * (`{fdname}`) and `add-fd` (`{fdset-id?}`) need. QEMU gets its own copy; the caller
   * still owns and closes `fd`.
   */
  executeWithFd<T = unknown>(command: string, args: Record<string, unknown> | undefined, fd: number, opts: QmpCommandOptions = {}): Promise<T> {
    return this.send<T>(command, args, opts, fd);
  }

  /** Calls `listener` for every later event; returns the function that stops it. */
  onEvent(listener: (e: QmpEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * Resolves with the first event at index >= `since` that `match` accepts (one already
   * received counts). Events are QEMU's own word that something happened: waiting for one
   * needs no polling command, which a QEMU busy loading a migration may not answer for long.
   */
  waitEvent(match: (e: QmpEvent) => boolean, opts: QmpWaitOptions): Promise<QmpEvent> {
    const found = this.events.slice(opts.since ?? 0).find(match);
    if (found) return Promise.resolve(found);
    if (this.closedError) return Promise.reject(this.closedError);
    return new Promise<QmpEvent>((resolve, reject) => {
      const waiter: EventWaiter = {
        match,
        resolve: (e) => { clearTimeout(timer); resolve(e); },
        reject: (e) => { clearTimeout(timer); reject(e); },
      };
      const timer = opts.timeoutMs === undefined ? undefined : setTimeout(() => {
        this.eventWaiters.delete(waiter);
        reject(new QmpError('EQMP_TIMEOUT', `${this.label}: no ${opts.what} within ${opts.timeoutMs} ms`, { path: this.path, label: this.label }));
      }, opts.timeoutMs);
      this.eventWaiters.add(waiter);
    });
  }

  /** True once the connection is gone (QEMU exited or closed the socket, or close() was called). */
  get isClosed(): boolean {
    return this.closedError !== null;
  }

  close(): void {
    this.failAll(this.closed('connection closed by migbridge'));
    this.socket.destroy();
  }

  private closed(why: string, cause?: unknown): QmpError {
    return new QmpError('EQMP_CLOSED', `${this.label}: QMP ${why}`, { path: this.path, label: this.label, ...(cause ? { cause } : {}) });
  }

  private greeting(timeoutMs: number): Promise<void> {
    if (this.greeted) return Promise.resolve();
    if (this.closedError) return Promise.reject(this.closedError);
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new QmpError('EQMP_TIMEOUT', `${this.label}: no QMP greeting within ${timeoutMs} ms`, { path: this.path, label: this.label })),
        timeoutMs,
      );
      this.greetingWaiter = {
        resolve: () => { clearTimeout(timer); resolve(); },
        reject: (e) => { clearTimeout(timer); reject(e); },
      };
    });
  }

  private send<T>(command: string, args: Record<string, unknown> | undefined, opts: QmpCommandOptions, fd: number | null): Promise<T> {
    if (this.closedError) return Promise.reject(this.closedError);
    const id = this.nextId++;
    const msg: Record<string, unknown> = { execute: command, id };
    if (args !== undefined) msg.arguments = args;
    const timeoutMs = opts.timeoutMs ?? this.commandTimeoutMs;
    const where = { path: this.path, label: this.label, command };
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new QmpError('EQMP_TIMEOUT', `${this.label}: QMP ${command} got no answer within ${timeoutMs} ms`, where));
      }, timeoutMs);
      this.pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      const line = Buffer.from(`${JSON.stringify(msg)}\n`);
      if (fd === null) {
        this.socket.write(line);
        return;
      }
      this.writeWithFd(line, fd).catch((e: unknown) => {
        this.pending.delete(id);
        clearTimeout(timer);
        reject(new QmpError('EQMP_FDPASS', `${this.label}: could not pass fd ${fd} with QMP ${command}: ${(e as Error).message}`, { ...where, cause: e }));
      });
    });
  }

  /**
   * The fd rides on the first byte sendmsg takes, so nothing written before may still be
   * queued in the stream: wait for Node's write queue to drain, then sendmsg directly.
   */
  private async writeWithFd(line: Buffer, fd: number): Promise<void> {
    if (this.socket.writableLength > 0) await new Promise<void>((r) => this.socket.once('drain', () => r()));
    const sent = sendWithFd(socketFd(this.socket), line, fd);
    if (sent < line.length) this.socket.write(line.subarray(sent));
  }

  private onData(chunk: string): void {
    this.buffer += chunk;
    let nl: number;
    while ((nl = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, nl).trim();
      this.buffer = this.buffer.slice(nl + 1);
      if (line === '') continue;
      let msg: QmpMessage;
      try {
        msg = JSON.parse(line) as QmpMessage;
      } catch {
        this.protocolError(`not JSON: ${JSON.stringify(line.slice(0, 80))}`);
        return;
      }
      this.onMessage(msg);
    }
    if (this.buffer.length > MAX_LINE) this.protocolError(`a line longer than ${MAX_LINE} bytes`);
  }

  private protocolError(what: string): void {
    this.failAll(new QmpError('EQMP_PROTOCOL', `${this.label}: the QMP peer sent ${what}`, { path: this.path, label: this.label }));
    this.socket.destroy();
  }

  private onMessage(msg: QmpMessage): void {
    if (msg.QMP !== undefined) {
      const v = msg.QMP.version;
      if (v?.qemu) this.version = { ...v.qemu, package: (v.package ?? '').trim() };
      this.greeted = true;
      this.greetingWaiter?.resolve();
      return;
    }
    if (msg.event !== undefined) {
      const e = msg as QmpEvent;
      this.events.push(e);
      for (const l of this.listeners) l(e);
      for (const w of this.eventWaiters) {
        if (w.match(e)) {
          this.eventWaiters.delete(w);
          w.resolve(e);
        }
      }
      return;
    }
    if (msg.id === undefined) return;
    const p = this.pending.get(msg.id);
    if (!p) return;
    this.pending.delete(msg.id);
    clearTimeout(p.timer);
    if (msg.error) {
      p.reject(new QmpError('EQMP_ERROR', `${this.label}: QMP ${p.command} failed: ${msg.error.class}: ${msg.error.desc}`, {
        path: this.path, label: this.label, command: p.command, errorClass: msg.error.class, desc: msg.error.desc,
      }));
    } else p.resolve(msg.return);
  }

  private failAll(err: QmpError): void {
    if (this.closedError) return;
    this.closedError = err;
    this.greetingWaiter?.reject(err);
    for (const w of this.eventWaiters) w.reject(err);
    this.eventWaiters.clear();
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new QmpError(err.code, `${err.message} (while waiting for ${p.command})`, { path: this.path, label: this.label, command: p.command, cause: err }));
    }
    this.pending.clear();
  }
}
