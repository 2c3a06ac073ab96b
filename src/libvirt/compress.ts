// Writing a libvirt image's stream compressed, as libvirt does: through the format's own
// program (`gzip -c`, `xz -c`, ...), its stdin fed by the writer (a pipe, so backpressure
// holds memory to the pipe buffers) and its stdout appended to the output file.
import type { Writable } from 'node:stream';
import { LibvirtImageError } from './errors.js';
import { startFilter } from './filter-process.js';
import type { LibvirtImageHeader } from './header.js';

type Compression = NonNullable<LibvirtImageHeader['compression']>;

/** The compression command libvirt runs for a format. */
export function compressCommand(format: Compression): [string, string[]] {
  return [format, ['-c']];
}

/**
 * Runs `fill` with a Writable whose bytes reach `out` compressed in `format`; resolves when the
 * compressor exited 0 and all its output was handed to `out`. `path` names the output in errors.
 */
export async function writeCompressed<T>(format: Compression, out: Writable, path: string, fill: (w: Writable) => Promise<T>): Promise<T> {
  const [prog, args] = compressCommand(format);
  const filter = startFilter(prog, args);
  const { child, exited } = filter;
  const drained = new Promise<void>((resolve, reject) => {
    child.stdout.once('end', resolve);
    child.stdout.once('error', reject);
  });
  child.stdout.pipe(out, { end: false });
  // A compressor that died stops reading: our writes then fail with EPIPE, and its exit status says why.
  let stdinError: Error | undefined;
  child.stdin.on('error', (e) => { stdinError ??= e; });
  let result: T;
  try {
    result = await fill(child.stdin);
    await new Promise<void>((resolve) => child.stdin.end(resolve));
    await drained;
  } catch (e) {
    child.kill('SIGKILL');
    await exited;
    const spawnError = filter.spawnError();
    throw spawnError ? failure(prog, args, path, spawnError.message, spawnError) : e;
  }
  const code = await exited;
  const spawnError = filter.spawnError();
  if (spawnError) throw failure(prog, args, path, spawnError.message, spawnError);
  if (code !== 0 || stdinError) {
    const why = filter.why() || stdinError?.message || '';
    throw failure(prog, args, path, `exit ${code}${why ? `: ${why}` : ''}`);
  }
  return result;
}

function failure(prog: string, args: string[], path: string, why: string, cause?: unknown): LibvirtImageError {
  return new LibvirtImageError('ELIBVIRT_COMPRESS', path, undefined, `"${prog} ${args.join(' ')}" failed compressing the stream (${why})`, cause);
}
