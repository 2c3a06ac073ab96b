// Shared by the codec tests: fixture paths, running the CLI, decoding buffers.
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { StreamDecoder, type DecoderOptions } from '../../src/qemu/decoder.js';
import type { StreamEvent } from '../../src/qemu/records.js';
import { encodeEvent } from '../../src/qemu/encode.js';

/** Repository root (tests run compiled from dist/test/qemu). */
export const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
export const FIXTURES = join(ROOT, 'test/fixtures/qemu10-vfio');
export const ONE_MTTY = join(FIXTURES, 'one-mtty.mig');
export const TWO_MTTY = join(FIXTURES, 'two-mtty.mig');
const CLI = join(ROOT, 'bin/migbridge.js');

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function cli(args: string[]): Promise<CliResult> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { timeout: 60_000, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

export async function scratch(t: { teardown(fn: () => Promise<void>): void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'migbridge-codec-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Decodes an in-memory stream, pushing it in chunks of `chunk` bytes. */
export function decodeBuffer(buf: Buffer, opts: DecoderOptions = {}, chunk = 65536): StreamEvent[] {
  const d = new StreamDecoder(opts);
  const out: StreamEvent[] = [];
  for (let i = 0; i < buf.length; i += chunk) {
    d.push(buf.subarray(i, i + chunk));
    out.push(...d.takeEvents());
  }
  d.end();
  out.push(...d.takeEvents());
  return out;
}

/** Re-encodes events; the concatenation must equal the input for a byte-exact codec. */
export function encodeAll(events: StreamEvent[]): Buffer {
  return Buffer.concat(events.map(encodeEvent));
}
