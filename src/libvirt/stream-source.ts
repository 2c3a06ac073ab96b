// The QEMU stream's bytes out of a libvirt save image, streamed with bounded
// memory: read from the stream offset as is (raw, sparse, and version 1 images),
// or through the same program libvirt uses to decompress (`<format> -dc`, lzop with
// `--ignore-warn`), whose pipes give backpressure.
import { createReadStream } from 'node:fs';
import { LibvirtImageError } from './errors.js';
import { startFilter } from './filter-process.js';
import type { LibvirtImageHeader } from './header.js';

/** The decompression command libvirt runs for a format. */
export function decompressCommand(format: NonNullable<LibvirtImageHeader['compression']>): [string, string[]] {
  return [format, format === 'lzop' ? ['-dc', '--ignore-warn'] : ['-dc']];
}

/** Yields the QEMU stream of a libvirt image in chunks of at most `chunkSize` (raw) bytes. */
export async function* libvirtStreamBytes(path: string, img: LibvirtImageHeader, chunkSize = 1 << 20): AsyncGenerator<Buffer, void, undefined> {
  const input = createReadStream(path, { start: img.streamOffset, highWaterMark: chunkSize });
  if (!img.compression) {
    try {
      for await (const chunk of input) yield chunk as Buffer;
    } finally {
      input.destroy();
    }
    return;
  }
  const [prog, args] = decompressCommand(img.compression);
  const filter = startFilter(prog, args);
  const { child, exited } = filter;
  // The decompressor may stop reading (bad data, or we stopped early): its stdin then
  // fails with EPIPE, which is not an error of ours; its exit status tells.
  child.stdin.on('error', () => {});
  input.on('error', (e) => child.stdin.destroy(e));
  input.pipe(child.stdin);
  let finished = false;
  try {
    for await (const chunk of child.stdout) yield chunk as Buffer;
    const code = await exited;
    finished = true;
    const spawnError = filter.spawnError();
    if (spawnError) {
      throw new LibvirtImageError('ELIBVIRT_DECOMPRESS', path, img.streamOffset, `cannot run "${prog}" to decompress the ${img.format} stream: ${spawnError.message}`, spawnError);
    }
    if (code !== 0) {
      const why = filter.why();
      throw new LibvirtImageError('ELIBVIRT_DECOMPRESS', path, img.streamOffset, `"${prog} ${args.join(' ')}" failed (exit ${code}) on the ${img.format} stream starting${why ? `: ${why};` : ''}`);
    }
  } finally {
    input.destroy();
    if (!finished) {
      child.kill('SIGKILL');
      child.stdout.destroy();
      await exited;
    }
  }
}

/** Streams `source` and keeps only its last `maxBytes` (for a trailer that is read last). */
export async function streamTail(source: AsyncIterable<Buffer>, maxBytes: number): Promise<{ tail: Buffer; total: number }> {
  const kept: Buffer[] = [];
  let keptBytes = 0;
  let total = 0;
  for await (const chunk of source) {
    total += chunk.length;
    kept.push(chunk);
    keptBytes += chunk.length;
    while (kept.length > 1 && keptBytes - kept[0]!.length >= maxBytes) keptBytes -= kept.shift()!.length;
  }
  const all = Buffer.concat(kept);
  return { tail: all.length > maxBytes ? all.subarray(all.length - maxBytes) : all, total };
}

