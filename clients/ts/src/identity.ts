/**
 * A device's identity: its Ed25519 key, its self-certifying device_id, and the tokens it
 * signs itself (docs/CONTRACT.md §1, §2). The seed never leaves this object except
 * through `seed`, for the app to keep in the platform's secure storage.
 */
import { ed25519 } from "@noble/curves/ed25519.js";
import { sha256 } from "@noble/hashes/sha2.js";
import { b64, b64url, hex, randomBytes, utf8 } from "./bytes.js";

export const DEFAULT_TOKEN_LIFETIME_S = 600;

/** Lowercase hex of the first 16 bytes of SHA-256(raw 32-byte public key). */
export function deviceIdOf(publicKey: Uint8Array): string {
  return hex(sha256(publicKey).slice(0, 16));
}

export class Identity {
  readonly seed: Uint8Array;
  readonly publicKey: Uint8Array;
  readonly deviceId: string;

  constructor(seed: Uint8Array) {
    if (seed.length !== 32) throw new Error("an Ed25519 seed is 32 bytes");
    this.seed = seed;
    this.publicKey = ed25519.getPublicKey(seed);
    this.deviceId = deviceIdOf(this.publicKey);
  }

  /** A new key from the CSPRNG. An app keeping several books makes one per book. */
  static generate(): Identity {
    return new Identity(randomBytes(32));
  }

  get publicKeyB64(): string {
    return b64(this.publicKey);
  }

  sign(message: Uint8Array): Uint8Array {
    return ed25519.sign(message, this.seed);
  }

  /**
   * A compact JWS signed by this device: header `{alg: EdDSA, typ: JWT}`, claims
   * `sub`, `iat`, `exp` (integer seconds) and `book_id` (null for a device in no book,
   * including a pending joiner). Short-lived on purpose; no `kid` or `jwk`.
   */
  token(bookId: string | null, lifetimeS: number = DEFAULT_TOKEN_LIFETIME_S, nowS?: number): string {
    const issued = Math.floor(nowS ?? Date.now() / 1000);
    const header = { alg: "EdDSA", typ: "JWT" };
    const claims = { sub: this.deviceId, iat: issued, exp: issued + lifetimeS, book_id: bookId };
    const input = b64url(utf8(JSON.stringify(header))) + "." + b64url(utf8(JSON.stringify(claims)));
    return input + "." + b64url(this.sign(utf8(input)));
  }

  toString(): string {
    return `Identity(${this.deviceId})`; // never the seed
  }
}
