/**
 * Pairing's byte formats (docs/CONTRACT.md §5): the deposits, the short authentication
 * string and the book-key box. Pure: no network.
 */
import { sha256 } from "@noble/hashes/sha2.js";
import { boxOpen, boxSeal } from "./box.js";
import { concat, equal, randomBytes, utf8 } from "./bytes.js";

export const TAG_COMMIT = 0x01;
export const TAG_NONCE = 0x02;
export const TAG_REVEAL = 0x03;
export const TAG_BOOK_KEY = 0x04;

export class PairingAbort extends Error {
  constructor(message: string) {
    super(message);
    this.name = "PairingAbort";
  }
}

export const newNonce = (): Uint8Array => randomBytes(32);

export function commitment(pkG: Uint8Array, nG: Uint8Array): Uint8Array {
  return sha256(concat(utf8("hp-sas-commit-v1"), pkG, nG));
}

export const commitMessage = (pkG: Uint8Array, nG: Uint8Array): Uint8Array =>
  concat(Uint8Array.of(TAG_COMMIT), commitment(pkG, nG));
export const nonceMessage = (nJ: Uint8Array): Uint8Array => concat(Uint8Array.of(TAG_NONCE), nJ);
export const revealMessage = (nG: Uint8Array): Uint8Array => concat(Uint8Array.of(TAG_REVEAL), nG);

/** Six digits: big-endian uint32 of SHA-256("hp-sas-v1" ‖ pk_G ‖ pk_J ‖ n_G ‖ n_J)[0..4] mod 10^6. */
export function sas(pkG: Uint8Array, pkJ: Uint8Array, nG: Uint8Array, nJ: Uint8Array): string {
  const d = sha256(concat(utf8("hp-sas-v1"), pkG, pkJ, nG, nJ));
  const n = ((d[0]! << 24) >>> 0) + (d[1]! << 16) + (d[2]! << 8) + d[3]!;
  return String(n % 1_000_000).padStart(6, "0");
}

/** J: the revealed n_G must open G's commitment. */
export function checkReveal(commit: Uint8Array, pkG: Uint8Array, nG: Uint8Array): void {
  if (!equal(commit, commitment(pkG, nG))) throw new PairingAbort("the revealed nonce does not match the commitment");
}

/** G: 0x04 ‖ nonce(24) ‖ crypto_box(book_key) from G's key to J's. */
export function sealBookKey(bookKey: Uint8Array, seedG: Uint8Array, pkJ: Uint8Array, nonce?: Uint8Array): Uint8Array {
  const n = nonce ?? randomBytes(24);
  return concat(Uint8Array.of(TAG_BOOK_KEY), n, boxSeal(bookKey, n, seedG, pkJ));
}

/** J: open the 0x04 message with its own seed and G's public key (throws if not from G). */
export function openBookKey(message: Uint8Array, seedJ: Uint8Array, pkG: Uint8Array): Uint8Array {
  if (message[0] !== TAG_BOOK_KEY || message.length !== 1 + 24 + 48) throw new PairingAbort("not a book-key message");
  try {
    return boxOpen(message.slice(25), message.slice(1, 25), seedJ, pkG);
  } catch {
    throw new PairingAbort("the book key was not boxed by the paired device");
  }
}

/** One deposit: its tag and body, checked for its length. Unknown tags come back as is. */
export function parse(message: Uint8Array): [number, Uint8Array] {
  if (message.length < 1) throw new PairingAbort("empty pairing message");
  const tag = message[0]!;
  const body = message.slice(1);
  const expected: Record<number, number> = { 1: 32, 2: 32, 3: 32, 4: 72 };
  if (expected[tag] !== undefined && body.length !== expected[tag]) throw new PairingAbort(`pairing message ${tag} has the wrong length`);
  return [tag, body];
}
