// The VFIO device layer: uAPI encoders, the MigrationDevice interface, the kernel and
// simulated backends, and openDevice() for spec strings.
export * from './device.js';
export { KernelDevice, type IoctlRunner, type KernelDeviceOptions } from './kernel.js';
export { openDevice, openDevices, parseDeviceSpec, listHostDevices, iommuGroupOf, cdevOf, VfioOpenError, type DeviceSpec, type OpenOptions } from './open.js';
export * as uapi from './uapi.js';
export * from './sim/index.js';
