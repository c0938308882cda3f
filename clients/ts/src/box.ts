/**
 * libsodium's crypto_box_easy / crypto_box_open_easy between two Ed25519 identities,
 * each key converted to X25519 (crypto_sign_ed25519_pk_to_curve25519 / _sk_): the
 * X25519 shared secret through HSalsa20, then XSalsa20-Poly1305 (MAC ‖ ciphertext).
 */
import { ed25519, x25519 } from "@noble/curves/ed25519.js";
import { hsalsa, xsalsa20poly1305 } from "@noble/ciphers/salsa.js";

const SIGMA = new Uint32Array(new Uint8Array([..."expand 32-byte k"].map((c) => c.charCodeAt(0))).buffer);

function words(bytes: Uint8Array): Uint32Array {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Uint32Array(bytes.length / 4);
  for (let i = 0; i < out.length; i++) out[i] = view.getUint32(4 * i, true);
  return out;
}

function wordsToBytes(w: Uint32Array): Uint8Array {
  const out = new Uint8Array(w.length * 4);
  const view = new DataView(out.buffer);
  for (let i = 0; i < w.length; i++) view.setUint32(4 * i, w[i]!, true);
  return out;
}

/** crypto_box_beforenm: HSalsa20(X25519(sk, pk), 0^16). */
function sharedKey(mySeed: Uint8Array, peerEd25519Public: Uint8Array): Uint8Array {
  const mySecret = ed25519.utils.toMontgomerySecret(mySeed);
  const peerPublic = ed25519.utils.toMontgomery(peerEd25519Public);
  const shared = x25519.getSharedSecret(mySecret, peerPublic);
  const out = new Uint32Array(8);
  hsalsa(SIGMA, words(shared), new Uint32Array(4), out);
  return wordsToBytes(out);
}

export function boxSeal(message: Uint8Array, nonce: Uint8Array, mySeed: Uint8Array, peerPublic: Uint8Array): Uint8Array {
  return xsalsa20poly1305(sharedKey(mySeed, peerPublic), nonce).encrypt(message);
}

export function boxOpen(boxed: Uint8Array, nonce: Uint8Array, mySeed: Uint8Array, peerPublic: Uint8Array): Uint8Array {
  return xsalsa20poly1305(sharedKey(mySeed, peerPublic), nonce).decrypt(boxed);
}
