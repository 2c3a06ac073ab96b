// The simulator's dirty model: while a running device has a saving session open, it
// dirties `dirtyRate` bytes per second of its blocks, chosen by a seeded xorshift, so a
// run with the same seed and timing dirties the same blocks.
import { BLOCK_SIZE } from './content.js';

export class DirtyModel {
  #rng: number;
  #carry = 0;
  #last = 0;

  constructor(
    seed: bigint,
    /** Bytes per second (0: the device never dirties). */
    private readonly rate: number,
  ) {
    this.#rng = Number(seed & 0x7fffffffn) | 1;
  }

  /** Starts the clock anew: time before now dirties nothing (the device was not running a session). */
  restart(): void {
    this.#last = performance.now();
  }

  /**
   * The blocks dirtied since the last call (the generation of each is bumped in `gens`),
   * in the order dirtied; none when the device is not `running` a saving session.
   */
  accrue(gens: Uint32Array, running: boolean): number[] {
    const now = performance.now();
    if (!running || this.rate <= 0 || gens.length === 0) {
      this.#last = now;
      return [];
    }
    const bytes = (this.rate * (now - this.#last)) / 1000 + this.#carry;
    this.#last = now;
    let n = Math.floor(bytes / BLOCK_SIZE);
    this.#carry = bytes - n * BLOCK_SIZE;
    n = Math.min(n, gens.length);
    const out: number[] = [];
    for (let i = 0; i < n; i++) {
      let x = this.#rng;
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      this.#rng = x;
      const b = (x >>> 0) % gens.length;
      gens[b] = gens[b]! + 1;
      out.push(b);
    }
    return out;
  }
}
