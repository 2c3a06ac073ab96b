// Milestones of a save or restore, handed to `onNote` as they happen (the CLI prints them
// as JSON lines with --progress --output=json): for tools that follow a transfer, and for
// tests that act at a known point (e.g. send a signal once the devices are stopped).
export type TransferNote =
  /** save: capabilities read, header and START sections written. */
  | { readonly type: 'setup'; readonly devices: number; readonly streamBytes: number }
  /** save: the devices with PRE_COPY entered it; their precopy data is read next. */
  | { readonly type: 'precopy'; readonly devices: number }
  /** save: one precopy round framed. */
  | { readonly type: 'precopy-round'; readonly round: number; readonly bytes: number; readonly streamBytes: number }
  /** save: the downtime estimate passed; the devices are being stopped. */
  | { readonly type: 'stopping'; readonly estimateMs: number }
  /** save: every device is in STOP_COPY; stop-copy data is read next. */
  | { readonly type: 'stopped'; readonly streamBytes: number }
  /** save: a device's END section is complete. */
  | { readonly type: 'device-saved'; readonly device: string; readonly bytes: number; readonly streamBytes: number }
  /** save: the stream is complete and visible under its final name. */
  | { readonly type: 'committed'; readonly streamBytes: number }
  /** restore: every device is in RESUMING. */
  | { readonly type: 'resuming'; readonly devices: number }
  /** restore: the first DATA_STATE bytes for a device were handed to its data_fd. */
  | { readonly type: 'device-data'; readonly device: string; readonly section: string; readonly offset: number }
  /** save or restore: cancelled; devices are being brought back. */
  | { readonly type: 'cancelling'; readonly reason: string }
  /** restore --from ENDPOINT: listening, at the address bound (a tcp port 0 is the port chosen). */
  | { readonly type: 'listening'; readonly endpoint: string };

export type NoteSink = (note: TransferNote) => void;
