// Public surface of the native I/O core: synchronous syscall helpers and the
// asynchronous IoEngine (one io_uring ring, or a worker-pool fallback).
export { pipe, socketpair, setPipeSize, setNonBlocking, ioctlSync, closeSync } from './sys.js';
