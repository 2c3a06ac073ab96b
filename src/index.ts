// Package entry: the engine's save/restore at the top level, each layer as a namespace.
export * as fsm from './fsm/index.js';
export * as vfio from './vfio/index.js';
export * as qemu from './qemu/index.js';
export * as native from './native/index.js';
export * as qmp from './qmp/index.js';
export { QmpClient, QmpError, type QmpEvent } from './qmp/index.js';
export { MigState, MigFlag } from './fsm/index.js';
export { openDevice, openDevices, type MigrationDevice } from './vfio/index.js';
export { save, type SaveOptions, type SaveReport, SaveRefusedError } from './engine/save.js';
export { restore, type RestoreOptions, type RestoreReport, RestoreFailedError } from './engine/restore.js';
export { openSink, type SinkTarget } from './engine/sink.js';
export { openEvents, type SourceTarget } from './engine/source.js';
export { migrate, type MigrateOptions } from './migrate/run.js';
export { type MigrateReport } from './migrate/report.js';
export { MigrateFailedError, MigrateRefusedError } from './migrate/errors.js';
export { runDemo, type DemoReport } from './engine/demo.js';
export { MigbridgeError, SysError, UsageError } from './errors.js';
export { runCheck, formatCheckReport, type CheckReport, type CheckResult, type CheckOptions } from './check/index.js';
