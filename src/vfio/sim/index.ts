// The simulated VFIO migration device (see device.ts and docs/devices.md).
export { SimDevice, createSimDevice, type SimResumeResult } from './device.js';
export { parseSimSpec, formatSimSpec, parseSize, parseRate, parseDuration, SIM_DEFAULTS, SIM_MAX_SIZE, type SimConfig, type SimFault } from './spec.js';
export { fullStreamBytes, stateDigest, BLOCK_SIZE, HEADER_SIZE, REGS_SIZE } from './content.js';
