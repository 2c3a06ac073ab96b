// Per-device and total progress (bytes, rate) drawn on a TTY; silent otherwise. The engine
// fills the counters (src/engine/progress.ts), this draws them.
import type { WriteStream } from 'node:tty';
import type { ProgressCounter, ProgressSink } from '../engine/progress.js';

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${u === 0 ? v.toFixed(0) : v.toFixed(1)} ${units[u]}`;
}

export function formatRate(bytesPerSecond: number): string {
  return `${formatBytes(bytesPerSecond)}/s`;
}

export class Progress implements ProgressSink {
  private readonly counters: ProgressCounter[] = [];
  private readonly started = process.hrtime.bigint();
  private timer: NodeJS.Timeout | undefined;
  private drawnLines = 0;

  /** `out` is drawn on only when it is a TTY; pass undefined to stay quiet. */
  constructor(private readonly out: WriteStream | undefined, private readonly label: string) {
    if (out?.isTTY) {
      this.timer = setInterval(() => this.draw(), 100);
      this.timer.unref();
    }
  }

  counter(id: string, total?: number): ProgressCounter {
    const c: ProgressCounter = { id, bytes: 0, done: false };
    if (total !== undefined) c.total = total;
    this.counters.push(c);
    return c;
  }

  elapsedSeconds(): number {
    return Number(process.hrtime.bigint() - this.started) / 1e9;
  }

  private bar(c: ProgressCounter, width: number): string {
    if (!c.total) return ' '.repeat(width);
    const filled = Math.min(width, Math.round((c.bytes / c.total) * width));
    return '#'.repeat(filled) + '.'.repeat(width - filled);
  }

  private draw(): void {
    if (!this.out) return;
    this.out.write(this.render());
  }

  /** The lines drawn on the next refresh (cursor moves included). */
  render(): string {
    const secs = Math.max(this.elapsedSeconds(), 1e-6);
    const lines: string[] = [];
    let total = 0;
    for (const c of this.counters) {
      total += c.bytes;
      const state = c.failed ? `FAILED ${c.failed}` : c.done ? 'done' : '';
      const rate = c.bytes > 0 ? formatRate(c.bytes / secs) : '';
      const read = c.read !== undefined ? ` read ${formatBytes(c.read).padStart(10)}` : '';
      lines.push(`  ${c.id.padEnd(18).slice(0, 18)} [${this.bar(c, 24)}]${read} ${c.read !== undefined ? 'written ' : ''}${formatBytes(c.bytes).padStart(10)} ${rate.padStart(12)}  ${state}`);
    }
    lines.push(`  ${this.label}: ${formatBytes(total)} in ${secs.toFixed(1)} s, ${formatRate(total / secs)}`);
    const up = this.drawnLines ? `\x1b[${this.drawnLines}F` : '';
    this.drawnLines = lines.length;
    return up + lines.map((l) => l + '\x1b[K').join('\n') + '\n';
  }

  stop(): void {
    if (this.timer) {
      clearInterval(this.timer);
      this.timer = undefined;
      this.draw();
    }
  }
}
