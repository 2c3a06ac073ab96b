// A deterministic byte pattern per stream, so that a reader can check every
// byte's value and position without keeping a copy of what was written.
export function patternByte(stream: number, pos: number): number {
  return (pos * 131 + stream * 7 + (pos >>> 11)) & 0xff;
}

export function fillPattern(buf: Buffer, stream: number, start: number): void {
  for (let i = 0; i < buf.length; i++) buf[i] = patternByte(stream, start + i);
}

/** Index of the first byte of chunk (at stream position start) that breaks the pattern, or -1. */
export function firstMismatch(chunk: Buffer, stream: number, start: number): number {
  for (let i = 0; i < chunk.length; i++) if (chunk[i] !== patternByte(stream, start + i)) return i;
  return -1;
}
