// The VFIO migration FSM, pure: no I/O. See transitions.ts for the kernel's table.
export * from './states.js';
export * from './transitions.js';
export * from './plans.js';
