/**
 * The HTTP API (docs/CONTRACT.md §3), one method per endpoint, over `fetch`. Sends only
 * ciphertext and public keys; an error envelope becomes a `RelayError` with its code.
 */
import { b64 } from "./bytes.js";
import type { Identity } from "./identity.js";

export const PREFIX = "/api/v1";

export class RelayError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details: Record<string, unknown> = {},
  ) {
    super(`${status} ${code}: ${message}`);
    this.name = "RelayError";
  }
}

export type Json = Record<string, any>;

export interface Ticket {
  upload_url: string;
  upload_method: "PUT";
  upload_headers: Record<string, string>;
  expires_in: number;
}
export interface PhotoTicket extends Ticket {
  photo_id: string;
  s3_key: string;
}
export interface SnapshotTicket extends Ticket {
  snapshot_id: string;
}
export interface OpRecord {
  seq: number;
  payload: string;
  timestamp: number;
  device_id: string;
  relay_timestamp: number;
}
export interface OpsPage {
  epoch: string;
  latest_seq: number;
  oldest_seq: number;
  has_more: boolean;
  gap: null | { resume_seq: number; snapshot?: { snapshot_id: string; epoch: string; covers_seq: number } };
  ops: OpRecord[];
}
export interface ExchangeAnswer {
  status: "waiting" | "matched" | "confirmed" | "rejected";
  peer_public_key: string | null;
  peer_device_id: string | null;
  payloads: string[];
}

export interface ApiOptions {
  /** Token lifetime for HTTP calls (seconds). */
  tokenLifetimeS?: number;
  fetch?: typeof fetch;
}

/** Authenticated calls for one device; `bookId` is the claim its tokens carry (null until it is a member). */
export class Api {
  readonly baseUrl: string;
  bookId: string | null;
  private readonly tokenLifetimeS: number;
  private readonly fetchFn: typeof fetch;

  constructor(baseUrl: string, readonly identity: Identity, bookId: string | null = null, options: ApiOptions = {}) {
    this.baseUrl = baseUrl.replace(/\/+$/, "");
    this.bookId = bookId;
    this.tokenLifetimeS = options.tokenLifetimeS ?? 300;
    this.fetchFn = options.fetch ?? globalThis.fetch.bind(globalThis);
  }

  token(): string {
    return this.identity.token(this.bookId, this.tokenLifetimeS);
  }

  /** One call; a 401 is answered once with a fresh token, then thrown. */
  async call<T = any>(method: string, path: string, body?: Json, query?: Record<string, string | number>): Promise<T> {
    let url = this.baseUrl + PREFIX + path;
    if (query) url += "?" + new URLSearchParams(Object.entries(query).map(([k, v]) => [k, String(v)])).toString();
    for (let attempt = 0; ; attempt++) {
      const headers: Record<string, string> = { Authorization: "Bearer " + this.token() };
      if (body !== undefined) headers["Content-Type"] = "application/json";
      const response = await this.fetchFn(url, {
        method,
        headers,
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
      });
      if (response.status === 401 && attempt === 0) {
        await response.body?.cancel();
        continue;
      }
      return (await unwrap(response)) as T;
    }
  }

  // --- devices and books ---------------------------------------------------------

  /** POST /devices: with a bookId, creates that book with this device as its first member. */
  register(bookId?: string): Promise<{ device_id: string; book_id: string | null; created_at: string }> {
    const body: Json = { public_key: this.identity.publicKeyB64 };
    if (bookId !== undefined) {
      body.book_id = bookId;
      this.bookId = bookId;
    }
    return this.call("POST", "/devices", body);
  }
  devices(): Promise<Json> {
    return this.call("GET", `/books/${this.book()}/devices`);
  }
  revoke(deviceId: string): Promise<null> {
    return this.call("DELETE", `/books/${this.book()}/devices/${deviceId}`);
  }
  syncStatus(): Promise<Json> {
    return this.call("GET", `/books/${this.book()}/sync_status`);
  }
  eraseBook(): Promise<null> {
    return this.call("DELETE", `/books/${this.book()}`);
  }

  // --- relay over HTTP -----------------------------------------------------------

  sendOp(payload: Uint8Array, timestamp: number, id?: string): Promise<{ seq: number; relay_timestamp: number }> {
    const body: Json = { book_id: this.book(), payload: b64(payload), timestamp };
    if (id !== undefined) body.id = id;
    return this.call("POST", "/relay/send", body);
  }
  ops(since = 0, epoch?: string | null, limit = 1000): Promise<OpsPage> {
    const query: Record<string, string | number> = { since, limit };
    if (epoch && since > 0) query.epoch = epoch;
    return this.call("GET", `/books/${this.book()}/ops`, undefined, query);
  }

  // --- pairing -------------------------------------------------------------------

  pairingGenerate(): Promise<{ short_code: string; pairing_id: string; expires_at: string; ttl_seconds: number }> {
    return this.call("POST", "/pairing/generate", { book_id: this.book() });
  }
  pairingVerify(shortCode: string): Promise<Json> {
    return this.call("POST", "/pairing/verify", { short_code: shortCode, public_key: this.identity.publicKeyB64 });
  }
  pairingExchange(pairingId: string, payload?: Uint8Array): Promise<ExchangeAnswer> {
    const body: Json = { pairing_id: pairingId };
    if (payload !== undefined) body.payload = b64(payload);
    return this.call("POST", "/pairing/exchange", body);
  }
  pairingConfirm(pairingId: string, accept: boolean): Promise<{ status: string }> {
    return this.call("POST", "/pairing/confirm", { pairing_id: pairingId, accept });
  }

  // --- photos and snapshots: metadata here, bytes straight to the blob URL --------

  photoUpload(sizeBytes: number): Promise<PhotoTicket> {
    return this.call("POST", "/photos/upload", { book_id: this.book(), size_bytes: sizeBytes });
  }
  photoComplete(photoId: string): Promise<{ photo_id: string; size_bytes: number }> {
    return this.call("POST", `/photos/${photoId}/complete`);
  }
  photoGet(photoId: string): Promise<{ photo_id: string; download_url: string; size_bytes: number; created_at: string }> {
    return this.call("GET", `/photos/${photoId}`);
  }
  photoDelete(photoId: string): Promise<null> {
    return this.call("DELETE", `/photos/${photoId}`);
  }
  snapshotCreate(epoch: string, coversSeq: number, sizeBytes: number): Promise<SnapshotTicket> {
    return this.call("POST", `/books/${this.book()}/snapshots`, { epoch, covers_seq: coversSeq, size_bytes: sizeBytes });
  }
  snapshotComplete(snapshotId: string): Promise<Json> {
    return this.call("POST", `/books/${this.book()}/snapshots/${snapshotId}/complete`);
  }
  snapshotLatest(): Promise<{ snapshot_id: string; epoch: string; covers_seq: number; download_url: string; size_bytes: number }> {
    return this.call("GET", `/books/${this.book()}/snapshots/latest`);
  }

  /**
   * PUT exactly the declared bytes with `upload_headers`, except `Content-Length`:
   * browsers refuse to set it, and every `fetch` sets it from the body, to the same
   * value the URL's signature binds.
   */
  async putBlob(url: string, headers: Record<string, string>, data: Uint8Array): Promise<void> {
    const sent = Object.fromEntries(Object.entries(headers).filter(([name]) => name.toLowerCase() !== "content-length"));
    const response = await this.fetchFn(url, { method: "PUT", headers: sent, body: data as BodyInit });
    await response.arrayBuffer();
    if (![200, 201, 204].includes(response.status)) throw new RelayError(response.status, "UPLOAD_FAILED", "blob store refused");
  }

  async getBlob(url: string): Promise<Uint8Array> {
    const response = await this.fetchFn(url);
    const bytes = new Uint8Array(await response.arrayBuffer());
    if (response.status !== 200) throw new RelayError(response.status, "DOWNLOAD_FAILED", "blob store refused");
    return bytes;
  }

  book(): string {
    if (this.bookId === null) throw new Error("this device is in no book yet");
    return this.bookId;
  }
}

async function unwrap(response: Response): Promise<unknown> {
  if (response.status === 204) return null;
  let body: any;
  try {
    body = await response.json();
  } catch {
    throw new RelayError(response.status, "BAD_RESPONSE", "not JSON");
  }
  if (body && body.success === true) return body.data;
  const error = (body && body.error) || {};
  throw new RelayError(response.status, String(error.code ?? "UNKNOWN"), String(error.message ?? ""), error.details ?? {});
}
