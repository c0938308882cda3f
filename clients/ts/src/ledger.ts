/**
 * The household ledger as a Yjs document (docs/CONTRACT.md §9). Map `entries`: entry id
 * (32 hex) → a plain object {amount_cents, currency, note, by, at_ms}; map
 * `attachments`: entry id → photo_id. Op plaintext: kind byte ‖ Yjs v1 update.
 */
import * as Y from "yjs";
import { concat, randomId } from "./bytes.js";

export const KIND_UPDATE = 0x01;
export const KIND_STATE_REQUEST = 0x02;

export function encodeOp(kind: number, update: Uint8Array): Uint8Array {
  return concat(Uint8Array.of(kind), update);
}

export function decodeOp(plaintext: Uint8Array): [number, Uint8Array] {
  const kind = plaintext[0];
  if (kind !== KIND_UPDATE && kind !== KIND_STATE_REQUEST) throw new Error("unknown op kind");
  return [kind, plaintext.slice(1)];
}

export interface Entry {
  entryId: string;
  amountCents: number;
  currency: string;
  note: string;
  by: string;
  atMs: number;
  photoId: string | null;
}

export class Ledger {
  readonly doc = new Y.Doc();
  private readonly entriesMap = this.doc.getMap<unknown>("entries");
  private readonly attachmentsMap = this.doc.getMap<unknown>("attachments");

  /** Run `edit` in one transaction and return exactly the update it made. */
  private change(edit: () => void): Uint8Array {
    const before = Y.encodeStateVector(this.doc);
    this.doc.transact(edit);
    return Y.encodeStateAsUpdate(this.doc, before);
  }

  addEntry(amountCents: number, note: string, by: string, currency = "EUR", atMs?: number): [string, Uint8Array] {
    if (!Number.isSafeInteger(amountCents)) throw new Error("amount_cents is a whole number");
    const entryId = randomId();
    const value = { amount_cents: amountCents, currency, note, by, at_ms: Math.floor(atMs ?? Date.now()) };
    return [entryId, this.change(() => this.entriesMap.set(entryId, value))];
  }

  attachPhoto(entryId: string, photoId: string): Uint8Array {
    if (!this.entriesMap.has(entryId)) throw new Error(`no entry ${entryId}`);
    return this.change(() => this.attachmentsMap.set(entryId, photoId));
  }

  apply(update: Uint8Array): void {
    Y.applyUpdate(this.doc, update);
  }

  /** Everything this device knows, as one update (for a peer or a snapshot). */
  fullState(): Uint8Array {
    return Y.encodeStateAsUpdate(this.doc);
  }

  /** The entries, by time then id: every device lists the same ledger in the same order. */
  entries(): Entry[] {
    const out: Entry[] = [];
    for (const [entryId, value] of this.entriesMap.entries()) {
      if (!value || typeof value !== "object" || value instanceof Y.AbstractType) continue;
      const v = value as Record<string, unknown>;
      const photo = this.attachmentsMap.get(entryId);
      out.push({
        entryId,
        amountCents: Math.round(Number(v.amount_cents ?? 0)),
        currency: String(v.currency ?? ""),
        note: String(v.note ?? ""),
        by: String(v.by ?? ""),
        atMs: Math.round(Number(v.at_ms ?? 0)),
        photoId: typeof photo === "string" ? photo : null,
      });
    }
    return out.sort((a, b) => a.atMs - b.atMs || (a.entryId < b.entryId ? -1 : a.entryId > b.entryId ? 1 : 0));
  }

  balanceCents(): number {
    return this.entries().reduce((sum, e) => sum + e.amountCents, 0);
  }
}
