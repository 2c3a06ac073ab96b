// A running migration's progress as the CLI shows it: a one-line bar on a terminal, a JSON
// line otherwise.
import type { MigrateProgress } from '../migrate/progress.js';
import { formatBytes, formatRate } from './progress.js';

const BAR = 24;

export function progressBar(p: MigrateProgress): string {
  const done = p.total > 0 ? Math.min(1, (p.total - p.remaining) / p.total) : 0;
  const fill = Math.round(done * BAR);
  return `[${'#'.repeat(fill)}${'.'.repeat(BAR - fill)}] ${p.status} ${formatBytes(p.transferred)} sent, ${formatBytes(p.remaining)} left, pass ${p.pass}, dirty ${formatRate(p.dirtyRate)}` +
    `${p.expectedDowntimeMs !== null ? `, expected downtime ${p.expectedDowntimeMs} ms` : ''}${p.vfioBytes ? `, vfio ${formatBytes(p.vfioBytes)}` : ''} (${(p.elapsedMs / 1000).toFixed(1)} s)`;
}

export function progressJson(p: MigrateProgress): string {
  return JSON.stringify({ progress: p });
}
