// Which machine types QEMU 10 writes COMMAND SWITCHOVER_START for, checked against the rule
// migbridge's save follows (sendsSwitchoverStart): real QEMU 10.0 migrates a paused VM of
// each machine type to a file and the stream says whether the marker is there. 9.2 is the
// boundary (its compat properties turn send-switchover-start off).
import test from 'ava';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { QemuVm } from '../helpers/qemu.js';
import { inspectStreamFile } from '../../src/qemu/summary.js';
import { sendsSwitchoverStart } from '../../src/qemu/machine-type.js';

for (const [machine, expected] of [['pc-i440fx-10.0', true], ['pc-i440fx-9.2', false], ['pc-q35-9.2', false]] as const) {
  test.serial(`QEMU 10.0, -M ${machine}: SWITCHOVER_START ${expected ? 'written' : 'absent'}, as sendsSwitchoverStart says`, async (t) => {
    t.is(sendsSwitchoverStart(machine), expected, 'the rule save follows');
    const dir = await mkdtemp(join(tmpdir(), 'migbridge-switchover-'));
    t.teardown(() => rm(dir, { recursive: true, force: true }));
    const vm = await QemuVm.start({ version: '10.0', args: ['-M', machine, '-m', '32', '-S', '-nodefaults', '-display', 'none'], name: machine, teardown: t.teardown.bind(t) });
    const file = join(dir, 'paused.mig');
    try {
      await vm.migrateToFile(file);
    } finally {
      await vm.quit();
    }
    const r = await inspectStreamFile(file);
    t.is(r.configuration?.machineType, machine);
    const marker = r.records.filter((x) => x.command === 'SWITCHOVER_START');
    t.is(marker.length, expected ? 1 : 0, `commands: ${r.records.filter((x) => x.kind === 'COMMAND').map((x) => x.command).join(', ')}`);
    t.is(r.switchoverStart, expected ? marker[0]!.offset : null);
    if (expected) {
      // After every setup/precopy section of RAM, before its END (written after the stop).
      const i = r.records.indexOf(marker[0]!);
      t.true(r.records.slice(0, i).every((x) => x.kind !== 'END') && r.records.slice(i).some((x) => x.kind === 'END'));
    }
  });
}
