// Loads the compiled addon (build/Release/migbridge_uring.node) and types its
// raw surface. Raw functions return -errno on failure; callers turn that into
// a SysError, so only this module knows the addon's calling convention.
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { MigbridgeError } from '../errors.js';

/** Raw engine object created by the addon (native/uring/engine.cc). */
export interface RawEngine {
  info(): { io: 'io_uring' | 'threadpool'; reason: string; ringEntries: number; fixedBuffers: boolean };
  submitRead(id: number, fd: number, buf: Buffer, offset: number, timeoutMs: number, fixedIndex: number): void;
  /** fixedIndex >= 0: buf lies in that registered pool buffer (WRITE_FIXED on io_uring). */
  submitWrite(id: number, fd: number, buf: Buffer, offset: number, timeoutMs: number, fixedIndex: number): void;
  submitReadv(id: number, fd: number, bufs: Buffer[], offset: number, timeoutMs: number): void;
  submitWritev(id: number, fd: number, bufs: Buffer[], offset: number, timeoutMs: number): void;
  submitPoll(id: number, fd: number, events: number, timeoutMs: number): void;
  submitClose(id: number, fd: number): void;
  submitCancelFd(id: number, fd: number): void;
  submitIoctl(id: number, fd: number, request: number, arg: Buffer | number | null): void;
  /** Sends every prepared SQE with one io_uring_enter; returns the count or -errno. */
  flush(): number;
  stats(): RawStats;
  destroy(): void;
}

export interface RawStats {
  enters: number;
  sqes: number;
  wakeups: number;
  completions: number;
  maxBatch: number;
}

export interface RawEngineOptions {
  entries: number;
  maxOps: number;
  forceThreadpool: boolean;
  ioWorkers: number;
  ioctlWorkers: number;
}

export interface RawAddon {
  pipe(): [number, number] | number;
  socketpair(): [number, number] | number;
  setPipeSize(fd: number, bytes: number): number;
  setNonBlocking(fd: number, on: boolean): number;
  ioctl(fd: number, request: number, arg: Buffer | number | null): number;
  close(fd: number): number;
  /** sendmsg of `bytes` with `fd` as SCM_RIGHTS: bytes sent or -errno. */
  sendWithFd(socketFd: number, bytes: Buffer, fd: number): number;
  /** [family, type, listening, nodelay] of a socket, or -errno (ENOTSOCK, EBADF). */
  socketInfo(fd: number): [number, number, boolean, boolean] | number;
  /** `completions` receives [id, res] pairs; `onComplete(n)` is called with the pair count. */
  Engine: new (
    opts: RawEngineOptions,
    pool: Buffer,
    bufferCount: number,
    bufferSize: number,
    completions: Int32Array,
    onComplete: (n: number) => void,
  ) => RawEngine;
}

function findAddon(): string {
  // An instrumented build (ASan, see docs/development.md) can be swapped in.
  const override = process.env.MIGBRIDGE_ADDON;
  if (override) return override;
  // dist/src/native/addon.js -> repo root is three levels up; src/ for ts runners.
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    const candidate = join(dir, 'build', 'Release', 'migbridge_uring.node');
    if (existsSync(candidate)) return candidate;
    dir = dirname(dir);
  }
  throw new MigbridgeError(
    'ENOADDON',
    'native addon build/Release/migbridge_uring.node not found: run `npx node-gyp rebuild` (needs liburing-dev: apt-get install -y liburing-dev)',
  );
}

let loaded: RawAddon | undefined;

export function addon(): RawAddon {
  if (!loaded) loaded = createRequire(import.meta.url)(findAddon()) as RawAddon;
  return loaded;
}
