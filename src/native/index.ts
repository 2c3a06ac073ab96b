// Public surface of the native I/O core: synchronous syscall helpers and the
// asynchronous IoEngine (one io_uring ring, or a worker-pool fallback).
export { pipe, socketpair, setPipeSize, setNonBlocking, ioctlSync, closeSync, sendWithFd } from './sys.js';
export {
  IoEngine,
  defaultEngine,
  retainPooled,
  envForce,
  POLLIN,
  POLLOUT,
  type IoBackendKind,
  type IoEngineInfo,
  type IoEngineOptions,
  type IoctlRequest,
  type IoctlResult,
  type IoOptions,
  type IoStats,
  type PooledBuffer,
} from './engine.js';
