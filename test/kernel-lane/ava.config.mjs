// ava config for the guest tests only (test/kernel-lane/guest.sh passes it with --config,
// which makes ava ignore package.json's "ava" section, whose files glob excludes these).
// The project tree is read-only in the guest: cache: false puts ava's cache in /tmp.
export default {
  files: ['dist/test/kernel/**/*.test.js'],
  cache: false,
  workerThreads: false,
  // One file at a time: the tests share 8 mdevs and TCG gives the guest 2 slow CPUs.
  concurrency: 1,
  // A hang guard, not a speed check: a single QEMU-driven test (migrate, multi-device) takes
  // over a minute in the TCG guest, longer on a loaded host.
  timeout: '5m',
  verbose: true,
};
