// A test's QEMUs on mtty mdevs, and the devices they own, brought back to a clean state
// whatever happens to the test (shared by the kernel-lane tests that run QEMU).
import type { ExecutionContext } from 'ava';
import type { QemuVm } from '../helpers/qemu-vm.js';
import { settleDevice, startMttyVm } from './qemu-guest.js';

/**
 * VMs started through it are killed at teardown if still there, then its devices are
 * brought back to RUNNING, so a failing test never leaves an mdev in RESUMING or owned by
 * a QEMU (docs/vfio-migration.md §10 gotcha 3).
 */
export function scope(t: ExecutionContext, uuids: string[]) {
  const vms: QemuVm[] = [];
  t.teardown(async () => {
    for (const vm of vms) await vm.kill();
    for (const u of uuids) await settleDevice(u).catch((e: unknown) => console.error(`teardown: ${u}: ${String(e)}`));
  });
  return {
    async vm(o: Parameters<typeof startMttyVm>[0]): Promise<QemuVm> {
      const vm = await startMttyVm(o);
      vms.push(vm);
      return vm;
    },
    /** Every VM gone; every device back in RUNNING; returns the states found before the reset. */
    async finish(): Promise<Record<string, string>> {
      for (const vm of vms) await vm.quit();
      const found: Record<string, string> = {};
      for (const u of uuids) {
        const s = await settleDevice(u);
        found[u] = s.found;
        t.is(s.now, 'RUNNING', `${u} left in RUNNING`);
      }
      return found;
    },
  };
}

