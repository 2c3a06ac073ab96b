// `reframe --to 7.2` checks sections, not only the machine type: a real QEMU 10.0 stream of a
// pc-i440fx-7.2 VM passes (every section at a version 7.2 registers, and real 7.2 loads it),
// the same stream with one section's version raised past 7.2's is refused naming the
// section, and written with --force (with a warning) it is refused by real QEMU 7.2 with its
// own "unsupported version" error: the generated 7.2 table agrees with 7.2.
import test from 'ava';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { QemuVm } from '../helpers/qemu.js';
import { inspectStreamFile } from '../../src/qemu/summary.js';
import { QEMU72_SECTION_VERSIONS } from '../../src/qemu/qemu72-sections.js';
import { cli, scratch } from './codec-helpers.js';

const ARGS = ['-M', 'pc-i440fx-7.2', '-m', '32', '-S', '-nodefaults', '-display', 'none'];

/** Loads `file` into a fresh QEMU 7.2 with the same machine; resolves to its runstate or rejects with its error. */
async function loadIn72(t: { teardown(fn: () => Promise<void> | void): void }, file: string): Promise<string> {
  const vm = await QemuVm.start({ version: '7.2', args: ARGS, name: 'reframe-sections-7.2', incomingDefer: true, teardown: t.teardown.bind(t) });
  try {
    return await vm.migrateIncomingFile(file);
  } finally {
    await vm.kill();
  }
}

test.serial('reframe --to 7.2: a section newer than 7.2 registers is refused naming it (--force: warned), and real QEMU 7.2 refuses it too', async (t) => {
  const dir = await scratch(t);
  const src = join(dir, 'q10-pc72.mig');
  const vm = await QemuVm.start({ version: '10.0', args: ARGS, name: 'reframe-sections-10.0', teardown: t.teardown.bind(t) });
  try {
    await vm.migrateToFile(src);
  } finally {
    await vm.quit();
  }
  // Every section of the real stream is at a version 7.2 registers: no refusal, no warning.
  const ok = await cli(['reframe', src, join(dir, 'ok.mig'), '--to', '7.2', '--output=json']);
  t.is(ok.code, 0, ok.stderr);
  t.deepEqual((JSON.parse(ok.stdout) as { warnings: string[] }).warnings, []);
  t.is(await loadIn72(t, join(dir, 'ok.mig')), 'prelaunch', 'QEMU 7.2 loads it (a VM never started stays in prelaunch)');

  // Raise apic's section version one past 7.2's (the be32 version after idstr and instance id).
  const report = await inspectStreamFile(src);
  const apic = report.records.find((r) => r.idstr === 'apic' && (r.kind === 'FULL' || r.kind === 'START'))!;
  t.truthy(apic, 'the stream has an apic section');
  const newest = QEMU72_SECTION_VERSIONS.apic!;
  t.is(apic.versionId, newest, '10.0 writes apic at the version 7.2 registers');
  const bytes = await readFile(src);
  const at = apic.offset + 1 + 4 + 1 + 'apic'.length + 4;
  t.is(bytes.readUInt32BE(at), newest);
  bytes.writeUInt32BE(newest + 1, at);
  const bumped = join(dir, 'bumped.mig');
  await writeFile(bumped, bytes);

  const refused = await cli(['reframe', bumped, join(dir, 'refused.mig'), '--to', '7.2', '--output=json']);
  t.is(refused.code, 1);
  const err = (JSON.parse(refused.stderr) as { error: { code: string; idstr: string; offset: number; found: string; message: string } }).error;
  t.like(err, { code: 'ESTREAM_UNSUPPORTED', idstr: 'apic', offset: apic.offset, found: String(newest + 1) });
  t.regex(err.message, /--force/);

  const forced = await cli(['reframe', bumped, join(dir, 'forced.mig'), '--to', '7.2', '--force', '--output=json']);
  t.is(forced.code, 0, forced.stderr);
  t.true((JSON.parse(forced.stdout) as { warnings: string[] }).warnings.some((w) => w.includes('"apic"')));
  const qemuSays = await loadIn72(t, join(dir, 'forced.mig')).then(
    (s) => `loaded: ${s}`,
    (e: Error) => e.message,
  );
  t.regex(qemuSays, new RegExp(`unsupported version ${newest + 1} for 'apic'`), 'QEMU 7.2 refuses the section the table said it would');
});
