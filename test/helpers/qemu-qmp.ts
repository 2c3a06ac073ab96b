// A minimal QMP client over a unix socket, for driving real QEMU in tests. Every wait is
// bounded: a command that gets no answer in time rejects instead of hanging the suite.
import type { Socket } from 'node:net';
import { connectUnixWhenListening } from '../../src/util/unix-connect.js';

export class QmpError extends Error {
  readonly errorClass: string;
  constructor(command: string, errorClass: string, desc: string) {
    super(`QMP ${command} failed: ${errorClass}: ${desc}`);
    this.name = 'QmpError';
    this.errorClass = errorClass;
  }
}

export interface QmpEvent {
  event: string;
  data?: unknown;
  timestamp?: { seconds: number; microseconds: number };
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

type QmpMessage = { QMP?: unknown; return?: unknown; error?: { class: string; desc: string }; event?: string; id?: number };

export class QmpClient {
  readonly events: QmpEvent[] = [];
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private buffer = '';
  private closedError: Error | null = null;
  private readonly eventWaiters = new Set<EventWaiter>();

  private constructor(private readonly socket: Socket, private readonly label: string) {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.onData(chunk));
    socket.on('error', (err) => this.failAll(err));
    socket.on('close', () => this.failAll(new Error(`${label}: QMP connection closed`)));
  }

  /** Connects, reads the greeting and negotiates capabilities, all within `timeoutMs`. */
  static async connect(path: string, label: string, timeoutMs: number): Promise<QmpClient> {
    // QEMU binds the socket before it listens: ECONNREFUSED at first is retried (seen in CI).
    const socket = await connectUnixWhenListening(path, { waitMs: timeoutMs }).catch((e: Error) => {
      throw new Error(`${label}: QMP connect to ${path}: ${e.message}`, { cause: e });
    });
    const client = new QmpClient(socket, label);
    await client.greeting(timeoutMs);
    await client.execute('qmp_capabilities', undefined, timeoutMs);
    return client;
  }

  private greetingWaiter: { resolve: () => void; reject: (e: Error) => void } | null = null;
  private greeted = false;

  private greeting(timeoutMs: number): Promise<void> {
    if (this.greeted) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${this.label}: no QMP greeting within ${timeoutMs} ms`)), timeoutMs);
      this.greetingWaiter = {
        resolve: () => { clearTimeout(timer); resolve(); },
        reject: (e) => { clearTimeout(timer); reject(e); },
      };
    });
  }

  /** Runs one QMP command; rejects with QmpError on an error reply, or on timeout. */
  execute(command: string, args: Record<string, unknown> | undefined, timeoutMs: number): Promise<unknown> {
    if (this.closedError) return Promise.reject(this.closedError);
    const id = this.nextId++;
    const msg: Record<string, unknown> = { execute: command, id };
    if (args !== undefined) msg.arguments = args;
    return new Promise<unknown>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`${this.label}: QMP ${command} got no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { command, resolve, reject, timer });
      this.socket.write(`${JSON.stringify(msg)}\n`);
    });
  }

  /**
   * Resolves with the first event at index >= `since` in `events` that `match` accepts (one
   * already received counts). Events are QEMU's own word that something happened, so a wait
   * for one needs no polling command, which a QEMU busy loading a migration may not answer
   * for a long time (its main loop is blocked; seen with multifd under load).
   */
  waitEvent(match: (e: QmpEvent) => boolean, opts: { since?: number; timeoutMs: number; what: string }): Promise<QmpEvent> {
    const found = this.events.slice(opts.since ?? 0).find(match);
    if (found) return Promise.resolve(found);
    if (this.closedError) return Promise.reject(this.closedError);
    return new Promise<QmpEvent>((resolve, reject) => {
      const waiter: EventWaiter = {
        match,
        resolve: (e) => { clearTimeout(timer); resolve(e); },
        reject: (e) => { clearTimeout(timer); reject(e); },
      };
      const timer = setTimeout(() => {
        this.eventWaiters.delete(waiter);
        reject(new Error(`${this.label}: no ${opts.what} within ${opts.timeoutMs} ms`));
      }, opts.timeoutMs);
      this.eventWaiters.add(waiter);
    });
  }

  close(): void {
    this.socket.destroy();
  }

  private onData(chunk: string): void {
    this.buffer += chunk;
    let nl: number;
    while ((nl = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, nl).trim();
      this.buffer = this.buffer.slice(nl + 1);
      if (line !== '') this.onMessage(JSON.parse(line) as QmpMessage);
    }
  }

  private onMessage(msg: QmpMessage): void {
    if (msg.QMP !== undefined) {
      this.greeted = true;
      this.greetingWaiter?.resolve();
      return;
    }
    if (msg.event !== undefined) {
      const e = msg as QmpEvent;
      this.events.push(e);
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
    if (msg.error) p.reject(new QmpError(p.command, msg.error.class, msg.error.desc));
    else p.resolve(msg.return);
  }

  private failAll(err: Error): void {
    if (this.closedError) return;
    this.closedError = err;
    this.greetingWaiter?.reject(err);
    for (const w of this.eventWaiters) w.reject(err);
    this.eventWaiters.clear();
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new Error(`${err.message} (while waiting for ${p.command})`));
    }
    this.pending.clear();
  }
}
