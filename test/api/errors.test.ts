// Bad input through the public API (src/index.ts and its namespaces): every failure is a
// MigbridgeError with a code, never a plain Error or a bare Node error, so callers (and the
// CLI's JSON output) can tell failures apart without parsing messages.
import test from 'ava';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as api from '../../src/index.js';

const { MigbridgeError, fsm, qemu, vfio } = api;

let dir: string;
test.before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'migbridge-api-errors-'));
  await writeFile(join(dir, 'garbage.mig'), Buffer.from('this is not a QEMU migration stream at all, just text'));
});
test.after.always(async () => {
  await rm(dir, { recursive: true, force: true });
});

const garbage = () => join(dir, 'garbage.mig');
const missing = () => join(dir, 'no-such-file.mig');

async function* chunks(...bufs: Buffer[]): AsyncGenerator<Buffer> {
  for (const b of bufs) yield b;
}
async function drain(it: AsyncIterable<unknown>): Promise<void> {
  for await (const _ of it) void _;
}

/** Each case calls the API with bad input; it must fail. */
const cases: [string, () => unknown][] = [
  ['fsm.parseState of an unknown name', () => fsm.parseState('bogus')],
  ['fsm.parseFlags of an unknown flag', () => fsm.parseFlags('stop-copy,zap')],
  ['fsm.nextStep to a value that is not a state', () => fsm.nextStep(7, fsm.MigState.RUNNING, 99)],
  ['fsm.path to a state the flags lack', () => fsm.path(1, fsm.MigState.RUNNING, fsm.MigState.PRE_COPY)],
  ['fsm.sourcePlan for flags without STOP_COPY', () => fsm.sourcePlan(0)],
  ['fsm.destinationPlan for flags without STOP_COPY', () => fsm.destinationPlan(4)],
  ['qemu.readStream of text', () => drain(qemu.readStream(chunks(Buffer.from('not a stream, not at all')))) ],
  ['qemu.readStream of a truncated header', () => drain(qemu.readStream(chunks(Buffer.from([0x51, 0x45]))))],
  ['qemu.Reader given input after its end', () => {
    const r = new qemu.Reader();
    r.end();
    r.push(Buffer.from([1]));
  }],
  ['qemu.parseVmDesc of non-JSON', () => qemu.parseVmDesc('{not json')],
  ['qemu.readStreamFile of a missing file', () => drain(qemu.readStreamFile(missing()))],
  ['qemu.readStreamFile of text', () => drain(qemu.readStreamFile(garbage()))],
  ['qemu.inspectStreamFile of a missing file', () => qemu.inspectStreamFile(missing())],
  ['qemu.inspectStreamFile of text', () => qemu.inspectStreamFile(garbage())],
  ['qemu.extractStreamFile of text', () => qemu.extractStreamFile(garbage(), { outDir: join(dir, 'x1') })],
  ['qemu.injectDeviceData from a missing file', () => qemu.injectDeviceData(missing(), join(dir, 'out1.mig'), [{ idstr: 'x', file: missing() }])],
  ['qemu.reframeStreamFile of text', () => qemu.reframeStreamFile(garbage(), join(dir, 'out2.mig'))],
  ['vfio.parseDeviceSpec of nonsense', () => vfio.parseDeviceSpec('nonsense')],
  ['openDevice of a sim spec with a bad size', () => api.openDevice('sim:size=lots')],
  ['openDevice of a PCI address that does not exist', () => api.openDevice('pci:0000:ff:1f.7')],
  ['save without devices', () => api.save({ devices: [], sink: { description: 'x', write: async () => {}, commit: async () => {}, abort: async () => {}, bytesWritten: () => 0 } })],
  ['restore without devices', () => api.restore({ devices: [], source: chunks() })],
  ['restore from text', async () => {
    const d = await api.openDevice('sim:size=64K');
    try {
      await api.restore({ devices: [d], source: chunks(Buffer.from('garbage garbage garbage garbage')) });
    } finally {
      await d.close();
    }
  }],
  ['openSink into a missing directory', () => api.openSink({ file: join(dir, 'no-dir', 'out.mig') })],
  ['openEvents of a missing file', async () => drain(await api.openEvents({ file: missing() }))],
  ['openEvents of text', async () => drain(await api.openEvents({ file: garbage() }))],
  ['runCheck of a device spec that is not one', () => api.runCheck({ devices: ['nonsense'], destructive: false })],
];

for (const [what, call] of cases) {
  test(`${what}: a MigbridgeError with a code`, async (t) => {
    let thrown: unknown;
    try {
      await call();
    } catch (e) {
      thrown = e;
    }
    t.truthy(thrown, 'the call failed');
    t.true(thrown instanceof MigbridgeError, `${(thrown as Error)?.constructor?.name}: ${(thrown as Error)?.message}`);
    const code = (thrown as InstanceType<typeof MigbridgeError>).code;
    t.regex(code, /^E[A-Z0-9_]+$/, `code ${code}`);
    t.not(code, 'EINTERNAL');
  });
}
