/**
 * End-to-end sealing (docs/CONTRACT.md §9): XChaCha20-Poly1305 under the book key with a
 * fresh 24-byte nonce, and associated data that binds each blob to its place.
 *   blob = 0x01 ‖ nonce(24) ‖ ciphertext with tag (plaintext + 16)
 */
import { xchacha20poly1305 } from "@noble/ciphers/chacha.js";
import { concat, randomBytes, utf8 } from "./bytes.js";

export const VERSION = 0x01;
export const NONCE_BYTES = 24;
export const OVERHEAD = 1 + NONCE_BYTES + 16; // 41 bytes per blob

export class DecryptError extends Error {
  constructor(message = "ciphertext does not open with this key here") {
    super(message);
    this.name = "DecryptError";
  }
}

export const opAad = (bookId: string): Uint8Array => utf8("hp-op-v1:" + bookId);
export const photoAad = (bookId: string, photoId: string): Uint8Array =>
  utf8("hp-photo-v1:" + bookId + ":" + photoId);
export const snapshotAad = (bookId: string, snapshotId: string): Uint8Array =>
  utf8("hp-snapshot-v1:" + bookId + ":" + snapshotId);

export function newBookKey(): Uint8Array {
  return randomBytes(32);
}

/** Seal with a random nonce; `nonce` is for test vectors only. */
export function seal(bookKey: Uint8Array, plaintext: Uint8Array, aad: Uint8Array, nonce?: Uint8Array): Uint8Array {
  if (bookKey.length !== 32) throw new Error("a book key is 32 bytes");
  const n = nonce ?? randomBytes(NONCE_BYTES);
  return concat(Uint8Array.of(VERSION), n, xchacha20poly1305(bookKey, n, aad).encrypt(plaintext));
}

export function openSealed(bookKey: Uint8Array, blob: Uint8Array, aad: Uint8Array): Uint8Array {
  if (blob.length < OVERHEAD || blob[0] !== VERSION) throw new DecryptError("not a Home Pocket ciphertext");
  try {
    return xchacha20poly1305(bookKey, blob.slice(1, 1 + NONCE_BYTES), aad).decrypt(blob.slice(1 + NONCE_BYTES));
  } catch {
    throw new DecryptError();
  }
}
