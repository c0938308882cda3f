/**
 * What a device remembers between runs: its book and book key, its position (epoch and
 * the highest seq N such that every seq ≤ N was received or acked), its ledger and its
 * outbox (ops kept until acked). `toJSON()` is the same layout as the Python reference
 * client's state.json. It holds the book key: keep it in the platform's secure storage.
 */

export interface PendingOp {
  id: string;
  payloadB64: string;
  timestamp: number;
}

export class Position {
  epoch: string | null = null;
  seq = 0;
  private ahead = new Set<number>();

  mark(seq: number): void {
    if (seq <= this.seq) return;
    this.ahead.add(seq);
    while (this.ahead.has(this.seq + 1)) {
      this.seq += 1;
      this.ahead.delete(this.seq);
    }
  }

  /** After a sync_gap: the ops after `resumeSeq` of `epoch` follow. */
  restart(epoch: string, resumeSeq: number): void {
    this.epoch = epoch;
    this.seq = resumeSeq;
    this.ahead = new Set([...this.ahead].filter((s) => s > resumeSeq));
    this.mark(resumeSeq);
  }
}

export interface StateJson {
  book_id: string | null;
  book_key: string | null;
  epoch: string | null;
  position: number;
  ledger: string;
  outbox: [string, string, number][];
}

export class DeviceState {
  bookId: string | null = null;
  bookKeyB64: string | null = null;
  position = new Position();
  ledgerB64 = "";
  outbox = new Map<string, PendingOp>();

  toJSON(): StateJson {
    return {
      book_id: this.bookId,
      book_key: this.bookKeyB64,
      epoch: this.position.epoch,
      position: this.position.seq,
      ledger: this.ledgerB64,
      outbox: [...this.outbox.values()].map((p) => [p.id, p.payloadB64, p.timestamp]),
    };
  }

  static fromJSON(raw: Partial<StateJson>): DeviceState {
    const state = new DeviceState();
    state.bookId = raw.book_id ?? null;
    state.bookKeyB64 = raw.book_key ?? null;
    state.position.epoch = raw.epoch ?? null;
    state.position.seq = Number(raw.position ?? 0);
    state.ledgerB64 = raw.ledger ?? "";
    for (const [id, payloadB64, timestamp] of raw.outbox ?? []) state.outbox.set(id, { id, payloadB64, timestamp });
    return state;
  }
}

/** Where a device keeps its state: an app passes one backed by its secure storage. */
export interface StateStore {
  load(): StateJson | null;
  save(state: StateJson): void;
}

export class MemoryStore implements StateStore {
  private saved: StateJson | null = null;
  load(): StateJson | null {
    return this.saved && (JSON.parse(JSON.stringify(this.saved)) as StateJson);
  }
  save(state: StateJson): void {
    this.saved = JSON.parse(JSON.stringify(state)) as StateJson; // no structuredClone on Hermes
  }
}
