/**
 * One phone: its identity, book and book key, ledger, offline queue, and the relay
 * session that syncs them: the API an app drives. Everything leaving this object is
 * ciphertext or a public key; a payload that does not open is counted and dropped.
 */
import { Api, RelayError } from "./api.js";
import { b64, randomId, unb64, uuid4 } from "./bytes.js";
import type { Identity } from "./identity.js";
import { KIND_STATE_REQUEST, KIND_UPDATE, Ledger, decodeOp, encodeOp, type Entry } from "./ledger.js";
import { newBookKey, opAad, openSealed, OVERHEAD, photoAad, seal, snapshotAad } from "./seal.js";
import { RelaySession, type Backoff, type WebSocketFactory } from "./session.js";
import { DeviceState, MemoryStore, type StateStore } from "./state.js";

export type EventSink = (name: string, kind: string, msg: Record<string, any>) => void;

export interface DeviceOptions {
  name?: string;
  /** Where the state (book key included) is kept; in memory by default. */
  store?: StateStore;
  /** Socket token lifetime in seconds (re-auth happens before it ends). */
  tokenLifetimeS?: number;
  backoff?: Backoff;
  webSocket?: WebSocketFactory;
  onEvent?: EventSink;
  fetch?: typeof fetch;
}

export class Device {
  readonly serverUrl: string;
  readonly name: string;
  readonly state: DeviceState;
  readonly ledger = new Ledger();
  readonly api: Api;
  session: RelaySession | null = null;
  /** A peer asked for our full state (0x02); answered once, when we are live. */
  oweState = false;
  /** Payloads that did not open with our book key. */
  undecryptable = 0;
  readonly refusedOps: { id: string; code: unknown }[] = [];
  private readonly store: StateStore;
  private readonly options: DeviceOptions;
  private listeners = new Set<() => void>();

  constructor(serverUrl: string, readonly identity: Identity, options: DeviceOptions = {}) {
    this.serverUrl = serverUrl.replace(/\/+$/, "");
    this.options = options;
    this.name = options.name ?? identity.deviceId.slice(0, 8);
    this.store = options.store ?? new MemoryStore();
    const saved = this.store.load();
    this.state = saved ? DeviceState.fromJSON(saved) : new DeviceState();
    if (this.state.ledgerB64) this.ledger.apply(unb64(this.state.ledgerB64));
    this.api = new Api(serverUrl, identity, this.state.bookId, { tokenLifetimeS: 300, ...(options.fetch ? { fetch: options.fetch } : {}) });
  }

  get deviceId(): string {
    return this.identity.deviceId;
  }
  get bookId(): string | null {
    return this.state.bookId;
  }
  get bookKey(): Uint8Array {
    if (this.state.bookKeyB64 === null) throw new Error("this device has no book key yet");
    return unb64(this.state.bookKeyB64);
  }
  requireBook(): string {
    if (this.state.bookId === null) throw new Error("this device is in no book yet");
    return this.state.bookId;
  }

  // --- the book --------------------------------------------------------------------

  /** Register the key alone (a device that will join a book by pairing). */
  register(): Promise<unknown> {
    return this.api.register();
  }

  /** Make a book (a UUIDv4 id unless given) and its key; this device is its first member. */
  async createBook(bookId: string = uuid4()): Promise<string> {
    await this.api.register(bookId);
    this.joinBook(bookId, newBookKey());
    return bookId;
  }

  joinBook(bookId: string, bookKey: Uint8Array): void {
    this.state.bookId = bookId;
    this.state.bookKeyB64 = b64(bookKey);
    this.api.bookId = bookId;
    this.save();
  }

  // --- the ledger --------------------------------------------------------------------

  /** Record locally at once; the sealed update waits in the outbox until acked. */
  addEntry(amountCents: number, note: string, currency = "EUR"): string {
    const [entryId, update] = this.ledger.addEntry(amountCents, note, this.deviceId, currency);
    this.queue(KIND_UPDATE, update);
    return entryId;
  }

  entries(): Entry[] {
    return this.ledger.entries();
  }

  /** Queue our whole state: as a state request (after a gap) or as an answer to one. */
  queueState(request: boolean): void {
    this.queue(request ? KIND_STATE_REQUEST : KIND_UPDATE, this.ledger.fullState());
  }

  private queue(kind: number, update: Uint8Array): void {
    const payload = seal(this.bookKey, encodeOp(kind, update), opAad(this.requireBook()));
    const id = randomId();
    this.state.outbox.set(id, { id, payloadB64: b64(payload), timestamp: Math.floor(Date.now() / 1000) });
    this.save();
    this.session?.flush();
  }

  // --- what the session hands us -------------------------------------------------------

  welcome(msg: Record<string, any>): void {
    if (this.state.position.seq === 0) this.state.position.epoch = String(msg.epoch);
  }

  receiveOp(msg: Record<string, any>): void {
    const seq = Number(msg.seq);
    try {
      const plaintext = openSealed(this.bookKey, unb64(String(msg.payload)), opAad(this.requireBook()));
      const [kind, update] = decodeOp(plaintext);
      this.ledger.apply(update);
      if (kind === KIND_STATE_REQUEST && msg.device_id !== this.deviceId) {
        this.oweState = true;
        this.session?.flush();
      }
    } catch {
      // Not ours to read: never applied; the seq still counts, or the position would stall.
      this.undecryptable += 1;
    }
    this.state.position.mark(seq);
    this.save();
  }

  acked(id: string, seq: number): void {
    this.state.outbox.delete(id);
    this.state.position.mark(seq);
    this.save();
  }

  /** An op the server will never take (too large, malformed): dropped, noted. */
  refused(msg: Record<string, any>): void {
    const id = msg.id;
    if (typeof id === "string" && this.state.outbox.delete(id)) {
      this.refusedOps.push({ id, code: msg.code });
      this.save();
    }
  }

  /** What we asked for is gone. True when a snapshot fills the hole; false when a full-state exchange must. */
  async handleGap(msg: Record<string, any>): Promise<boolean> {
    this.state.position.restart(String(msg.epoch), Number(msg.resume_seq));
    this.save();
    if (!msg.snapshot) return false;
    try {
      await this.loadSnapshot();
    } catch {
      return false; // no snapshot after all, or one that does not open: ask the peers
    }
    return true;
  }

  // --- without a socket ------------------------------------------------------------------

  /** One round over HTTP (a background refresh): push the outbox, then page `GET ops` from our position. */
  async syncOverHttp(): Promise<void> {
    if (this.session?.running) throw new Error("the socket is syncing this device; use one or the other");
    // `relay/send` answers a seq but no epoch: learn the epoch first, or our own acked
    // seqs would make a position without one (which the server answers with a gap).
    if (this.state.position.epoch === null) this.state.position.epoch = String((await this.api.syncStatus()).epoch);
    await this.pushOverHttp();
    let askedForState = false;
    for (;;) {
      const position = this.state.position;
      const page = await this.api.ops(position.seq, position.seq > 0 ? position.epoch : null);
      if (position.seq === 0 && page.gap === null) position.epoch = page.epoch;
      if (page.gap !== null) {
        const usable = await this.handleGap({ epoch: page.epoch, ...page.gap });
        if (!usable && !askedForState) {
          askedForState = true;
          this.queueState(true);
        }
      }
      for (const op of page.ops) this.receiveOp(op);
      if (!page.has_more) break;
    }
    if (this.oweState || askedForState) {
      if (this.oweState) {
        this.oweState = false;
        this.queueState(false);
      }
      await this.pushOverHttp();
    }
  }

  private async pushOverHttp(): Promise<void> {
    for (const op of [...this.state.outbox.values()]) {
      try {
        const sent = await this.api.sendOp(unb64(op.payloadB64), op.timestamp, op.id);
        this.acked(op.id, sent.seq);
      } catch (err) {
        if (err instanceof RelayError && (err.code === "VALIDATION_ERROR" || err.code === "PAYLOAD_TOO_LARGE")) {
          this.refused({ id: op.id, code: err.code });
          continue;
        }
        throw err; // rate limited, or the server is away: the op stays queued
      }
    }
  }

  // --- snapshots ----------------------------------------------------------------------------

  /** Seal the full state and hand it to the server (which then trims the ops it covers). */
  async uploadSnapshot(): Promise<Record<string, any>> {
    const bookId = this.requireBook();
    const state = this.ledger.fullState();
    const { epoch, seq } = this.state.position;
    const made = await this.api.snapshotCreate(String(epoch), seq, state.length + OVERHEAD);
    const blob = seal(this.bookKey, state, snapshotAad(bookId, made.snapshot_id));
    await this.api.putBlob(made.upload_url, made.upload_headers, blob);
    return this.api.snapshotComplete(made.snapshot_id);
  }

  async loadSnapshot(): Promise<Record<string, any>> {
    const latest = await this.api.snapshotLatest();
    const blob = await this.api.getBlob(latest.download_url);
    this.ledger.apply(openSealed(this.bookKey, blob, snapshotAad(this.requireBook(), latest.snapshot_id)));
    this.save();
    return latest;
  }

  // --- photos -------------------------------------------------------------------------------

  /** Seal, upload straight to the blob store, complete, then record the photo_id in the ledger. */
  async attachPhoto(entryId: string, photo: Uint8Array): Promise<string> {
    const bookId = this.requireBook();
    const ticket = await this.api.photoUpload(photo.length + OVERHEAD);
    const blob = seal(this.bookKey, photo, photoAad(bookId, ticket.photo_id));
    await this.api.putBlob(ticket.upload_url, ticket.upload_headers, blob);
    await this.api.photoComplete(ticket.photo_id);
    this.queue(KIND_UPDATE, this.ledger.attachPhoto(entryId, ticket.photo_id));
    return ticket.photo_id;
  }

  async fetchPhoto(photoId: string): Promise<Uint8Array> {
    const info = await this.api.photoGet(photoId);
    const blob = await this.api.getBlob(info.download_url);
    return openSealed(this.bookKey, blob, photoAad(this.requireBook(), photoId));
  }

  // --- online / offline -----------------------------------------------------------------------

  goOnline(): RelaySession {
    if (!this.session || !this.session.running) {
      this.session = new RelaySession(this, (kind, msg) => this.event(kind, msg), {
        ...(this.options.backoff ? { backoff: this.options.backoff } : {}),
        ...(this.options.webSocket ? { webSocket: this.options.webSocket } : {}),
        tokenLifetimeS: this.options.tokenLifetimeS ?? 600,
      });
      this.session.start();
    }
    return this.session;
  }

  async goOffline(): Promise<void> {
    const session = this.session;
    this.session = null;
    await session?.stop();
    this.notify();
  }

  async close(): Promise<void> {
    await this.goOffline();
  }

  private event(kind: string, msg: Record<string, any>): void {
    this.options.onEvent?.(this.name, kind, msg);
    this.notify();
  }

  // --- waiting (for UIs and tests) ------------------------------------------------------------

  /** Called after every change of state (an op, an ack, a connect): for a UI to redraw. */
  subscribe(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  waitUntil(predicate: () => boolean, withinMs = 10_000): Promise<void> {
    if (predicate()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        unsubscribe();
        reject(new Error(`${this.name}: not there within ${withinMs} ms`));
      }, withinMs);
      const unsubscribe = this.subscribe(() => {
        if (predicate()) {
          clearTimeout(timer);
          unsubscribe();
          resolve();
        }
      });
    });
  }

  /** Live on the socket, and every op of ours acked. */
  waitSynced(withinMs = 10_000): Promise<void> {
    return this.waitUntil(() => !!this.session?.live && this.state.outbox.size === 0, withinMs);
  }

  private notify(): void {
    for (const listener of [...this.listeners]) listener();
  }

  private save(): void {
    this.state.ledgerB64 = b64(this.ledger.fullState());
    this.store.save(this.state.toJSON());
    this.notify();
  }
}
