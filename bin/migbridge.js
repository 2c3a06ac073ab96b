#!/usr/bin/env node
// Thin launcher: the CLI lives in the compiled TypeScript (npm run build). Loading it opens
// many module files at once: under a low open-file limit that fails (EMFILE), and the
// user gets a line saying so, not a stack trace (MIGBRIDGE_DEBUG=1 shows it).
import('../dist/src/cli/main.js').then((m) => m.main(process.argv.slice(2))).then(
  (code) => { process.exitCode = code; },
  (err) => {
    const code = err && err.code;
    const hint = code === 'EMFILE' || code === 'ENFILE' ? ' (too many open files: raise the limit, e.g. ulimit -n 1024)' : '';
    process.stderr.write(`migbridge: cannot start: ${err && err.message ? err.message : String(err)}${hint}\n`);
    if (process.env.MIGBRIDGE_DEBUG) console.error(err);
    process.exitCode = 1;
  },
);
