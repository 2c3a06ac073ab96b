// Where the slow test and bench artefacts live (generated QEMU streams, guest images, the
// QEMU 7.2 tree, helper binaries), outside the clone so that fresh clones reuse them.
// MIGBRIDGE_CACHE moves the whole cache (the shell scripts read the same variable), e.g. to
// an empty directory for a cold-cache CI run without losing the machine's cache.
import { join } from 'node:path';

export const CACHE_ROOT = process.env.MIGBRIDGE_CACHE ?? '/var/cache/migbridge';

/** A path inside the cache: cachePath('streams', '10.0.2'). */
export function cachePath(...parts: string[]): string {
  return join(CACHE_ROOT, ...parts);
}

/** The generated QEMU streams; MIGBRIDGE_STREAM_CACHE moves only these (to time a cold generation). */
export const STREAM_CACHE = process.env.MIGBRIDGE_STREAM_CACHE ?? cachePath('streams');
