// Async front ends of the decoder: any async byte source (file, pipe, socket)
// becomes an async iterator of typed events. Payload events are slices of the
// current input chunk, so memory stays bounded by the chunk size as long as the
// consumer does not keep them.
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { constants } from 'node:os';
import { MigbridgeError, SysError, fileError } from '../errors.js';
import { StreamError } from './errors.js';
import { StreamDecoder, type DecoderOptions } from './decoder.js';
import type { StreamEvent } from './records.js';
import { readTailVmDesc, type VmDesc } from './vmdesc.js';
// libvirt save images (`virsh save`): header + XML before the stream, maybe compressed.
import { libvirtStreamBytes, libvirtVmDesc, readLibvirtImageHeader, type LibvirtImageHeader } from '../libvirt/index.js';

export type ByteSource = AsyncIterable<Uint8Array | Buffer | string>;

/**
 * A source that reuses the memory of the chunks it yields (a buffer pool) learns, before
 * each pull, how many bytes at the end of what it yielded the decoder still holds; every
 * event of the chunks before them has been handed to the consumer by then.
 */
export interface RecyclingByteSource extends AsyncIterable<Buffer> {
  held(bytes: number): void;
}

/** Decodes a stream from any async byte source. Throws StreamError on bad input. */
export async function* readStream(source: ByteSource, opts: DecoderOptions = {}): AsyncGenerator<StreamEvent, void, undefined> {
  const dec = new StreamDecoder(opts);
  const recycler = (source as Partial<RecyclingByteSource>).held?.bind(source);
  for await (const chunk of source) {
    if (typeof chunk === 'string') throw new TypeError('readStream: the source must yield bytes, not strings (no encoding set)');
    yield* decodeStep(dec, () => dec.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength)));
    recycler?.(dec.buffered);
  }
  yield* decodeStep(dec, () => dec.end());
}

/**
 * Runs one decoder step and yields what it decoded. When the step fails, the records
 * decoded before the failure in the same input chunk are yielded first, so a consumer sees
 * every good record in stream order before the error (reframe refuses at the first
 * record it cannot carry, which may precede a later decoding error).
 */
function* decodeStep(dec: StreamDecoder, step: () => void): Generator<StreamEvent, void, undefined> {
  try {
    step();
  } catch (e) {
    yield* dec.takeEvents();
    throw e;
  }
  yield* dec.takeEvents();
}

export interface FileReadOptions extends DecoderOptions {
  /** Read size per chunk (default 1 MiB). */
  chunkSize?: number;
  /** How far from the end to look for the vmdesc (default 64 MiB). */
  vmdescSearchBytes?: number;
  /** Reads a plain (not libvirt) stream file's bytes instead of a libuv read stream (e.g. through the io_uring pool). */
  openBytes?: (path: string, chunkSize: number) => ByteSource & { destroy?: () => void };
}

/** What `openStreamFile` found before streaming: the vmdesc read from the file's tail. */
export interface StreamFileInfo {
  /** Size of the stream in a regular file; undefined for pipes, FIFOs, character devices and compressed images. */
  size: number | undefined;
  vmdesc: VmDesc | undefined;
  /** Set when the file is a libvirt save image: its header, XML, and where the stream starts. */
  libvirt?: LibvirtImageHeader;
}

/** Stats a stream file and, when it is a regular (seekable) file, reads its vmdesc from the tail. */
export async function probeStreamFile(path: string, opts: FileReadOptions = {}): Promise<StreamFileInfo> {
  const st = await stat(path).catch((e: unknown): never => { throw fileError(e, path); });
  // A directory would fail only at the first read, with an error that names no path.
  if (st.isDirectory()) throw new SysError('open', constants.errno.EISDIR, `${path}: is a directory, not a stream file`, { path });
  if (!st.isFile()) return { size: undefined, vmdesc: opts.vmdesc };
  const libvirt = await readLibvirtImageHeader(path);
  if (libvirt) {
    const vmdesc = opts.vmdesc ?? (await libvirtVmDesc(path, libvirt, opts.vmdescSearchBytes));
    return { size: libvirt.compression ? undefined : Math.max(0, st.size - libvirt.streamOffset), vmdesc, libvirt };
  }
  const vmdesc = opts.vmdesc ?? (await readTailVmDesc(path, opts.vmdescSearchBytes))?.desc;
  return { size: st.size, vmdesc };
}

/**
 * The stream's bytes of a stream file: the file itself, or the QEMU stream inside a
 * libvirt save image (after its header, decompressed when stored compressed). The one
 * place a stream file is opened for reading.
 */
export function openStreamBytes(
  path: string,
  info: StreamFileInfo,
  chunkSize = 1 << 20,
  openBytes?: FileReadOptions['openBytes'],
): ByteSource & { destroy?: () => void } {
  if (info.libvirt) return libvirtStreamBytes(path, info.libvirt, chunkSize);
  if (openBytes) return openBytes(path, chunkSize);
  return createReadStream(path, { highWaterMark: chunkSize });
}

/** Decoder offsets count from the QEMU stream; in a libvirt image say where that starts. */
function locateInImage(e: unknown, img: LibvirtImageHeader | undefined): unknown {
  if (img && e instanceof Error && typeof (e as { offset?: unknown }).offset === 'number') {
    e.message += ` (stream offsets: the QEMU stream starts at file offset ${img.streamOffset} of this libvirt ${img.format} image, after its header and XML)`;
  }
  return e;
}

/**
 * A seekable file whose records need the vmdesc but that has no vmdesc trailer: QEMU writes
 * the trailer last, so the file was cut short (or its QEMU suppressed the vmdesc). Said so,
 * as truncation, instead of only "cannot delimit".
 */
function missingTrailer(e: MigbridgeError, info: StreamFileInfo): MigbridgeError {
  if (!(e instanceof StreamError) || e.code !== 'ESTREAM_CANNOT_DELIMIT' || info.size === undefined || info.vmdesc) return e;
  return new StreamError(
    'ESTREAM_TRUNCATED',
    `the file ends without the vmdesc trailer QEMU writes last, so it looks truncated (or its vmdesc was suppressed: pass one with --vmdesc JSONFILE); the first record that needs it`,
    { ...(e.offset !== undefined ? { offset: e.offset } : {}), ...(e.sectionId !== undefined ? { sectionId: e.sectionId } : {}), ...(e.idstr !== undefined ? { idstr: e.idstr } : {}), cause: e },
  );
}

/**
 * Decodes a stream file. A seekable file's vmdesc (written last) is read from
 * the tail first so FULL sections can be framed while streaming from the start.
 */
export async function* readStreamFile(path: string, opts: FileReadOptions = {}): AsyncGenerator<StreamEvent, void, undefined> {
  const info = await probeStreamFile(path, opts);
  const source = openStreamBytes(path, info, opts.chunkSize, opts.openBytes);
  try {
    yield* readStream(source, {
      ...opts,
      ...(info.size !== undefined ? { totalSize: info.size } : {}),
      ...(info.vmdesc ? { vmdesc: info.vmdesc } : {}),
      ...(info.libvirt ? { fileOffset: info.libvirt.streamOffset } : {}),
    });
  } catch (e) {
    throw e instanceof MigbridgeError ? (locateInImage(missingTrailer(e, info), info.libvirt) as MigbridgeError).inFile(path) : locateInImage(e, info.libvirt);
  } finally {
    source.destroy?.();
  }
}
