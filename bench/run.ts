// Benchmark dispatcher: `node dist/bench/run.js <name> [args]` runs bench/<name>.ts
// (`npm run bench` alone runs bench/datapath.ts).
// Benchmarks print measurements and ratios; they are not tests and assert nothing.
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

interface Bench {
  main(args: string[]): Promise<void>;
}

// No name (or options first, as in `npm run bench -- --quick`): the data-path bench.
const argv = process.argv.slice(2);
const [name, ...args] = argv.length === 0 || argv[0]!.startsWith('--') ? ['datapath', ...argv] : argv;
const here = dirname(fileURLToPath(import.meta.url));
if (!name || !/^[a-z0-9-]+$/.test(name) || name === 'run' || !existsSync(join(here, `${name}.js`))) {
  process.stderr.write(`usage: node dist/bench/run.js <name> [args]   (name = bench/<name>.ts, e.g. uring)\n`);
  process.exit(2);
}
const mod = (await import(`./${name}.js`)) as Bench;
await mod.main(args);
