// The published test vectors (docs/CONTRACT.md §5 and §9, pairing/README.md,
// client/PROTOCOL.md), checked against this package.
import assert from "node:assert/strict";
import { test } from "node:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Identity, deviceIdOf, hex, unhex, utf8, seal, openSealed, opAad, sas, b64, unb64, b64url, Ledger, DecryptError, uuid4 } from "../dist/index.js";
import { REPO } from "./server.mjs";

const seq = (start, n = 32) => Uint8Array.from({ length: n }, (_, i) => start + i);
const G = new Identity(seq(0x00));
const J = new Identity(seq(0x20));

test("public keys from the vector seeds", () => {
  assert.equal(hex(G.publicKey), "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8");
  assert.equal(hex(J.publicKey), "29acbae141bccaf0b22e1a94d34d0bc7361e526d0bfe12c89794bc9322966dd7");
  assert.match(deviceIdOf(G.publicKey), /^[0-9a-f]{32}$/);
});

// Read from pairing/README.md itself, so the published table and this package agree.
function sasRows() {
  const text = readFileSync(join(REPO, "pairing", "README.md"), "utf8");
  const rows = [...text.matchAll(/^\| `([0-9a-f]{64})` \| `([0-9a-f]{64})` \| `([0-9a-f]{64})` \| (\d{6}) \|$/gm)];
  assert.equal(rows.length, 3, "the three SAS vectors of pairing/README.md");
  return rows.map((m) => ({ nG: unhex(m[1]), nJ: unhex(m[2]), commit: m[3], code: m[4] }));
}

test("commitments and SAS of pairing/README.md", () => {
  for (const row of sasRows()) {
    assert.equal(hex(sas.commitment(G.publicKey, row.nG)), row.commit);
    assert.equal(sas.sas(G.publicKey, J.publicKey, row.nG, row.nJ), row.code);
    sas.checkReveal(unhex(row.commit), G.publicKey, row.nG);
    assert.throws(() => sas.checkReveal(unhex(row.commit), G.publicKey, row.nJ), sas.PairingAbort);
  }
  const swapped = sasRows().map((r) => sas.sas(J.publicKey, G.publicKey, r.nG, r.nJ));
  assert.deepEqual(swapped, ["814034", "218340", "003737"]);
});

test("the book-key message of pairing/README.md", () => {
  const bookKey = seq(0x80);
  const nonce = seq(0xa0, 24);
  const message = sas.sealBookKey(bookKey, G.seed, J.publicKey, nonce);
  assert.equal(
    hex(message),
    "04a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7737d51f22bcb05f890434042bf106148e20a281e69767619b4ab254a440766fb0808f90e798312d6e699098e348e2e67",
  );
  assert.deepEqual(sas.openBookKey(message, J.seed, G.publicKey), bookKey);
  const other = Identity.generate();
  assert.throws(() => sas.openBookKey(message, J.seed, other.publicKey), sas.PairingAbort);
});

test("the sealing vector of client/PROTOCOL.md", () => {
  const key = seq(0x00);
  const bookId = "5f0e6a63-0d4c-4a4b-9a6e-3d2f1c0b9a88";
  const nonce = unhex("6465666768696a6b6c6d6e6f707172737475767778797a7b");
  const expected = "016465666768696a6b6c6d6e6f707172737475767778797a7b341c94d5df7ee6e1ec55e91fc91f9dbd3ec826519249a9c4e3271d91725c700c59a7a2f806ce16f0f033";
  assert.equal(hex(seal(key, utf8("Home Pocket op test vector"), opAad(bookId), nonce)), expected);
  assert.equal(new TextDecoder().decode(openSealed(key, unhex(expected), opAad(bookId))), "Home Pocket op test vector");
  assert.throws(() => openSealed(key, unhex(expected), opAad("another-book-id-000")), DecryptError);
});

test("base64 and tokens", () => {
  for (let n = 0; n < 40; n++) {
    const bytes = seq(250 - n, n).map((x) => x & 255);
    assert.equal(b64(bytes), Buffer.from(bytes).toString("base64"));
    assert.deepEqual(unb64(b64(bytes)), bytes);
    assert.equal(b64url(bytes), Buffer.from(bytes).toString("base64url"));
  }
  assert.throws(() => unb64("AAE"));
  assert.match(uuid4(), /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  const token = G.token(null, 300, 1_700_000_000);
  const [h, c] = token.split(".").slice(0, 2).map((p) => JSON.parse(Buffer.from(p, "base64url").toString()));
  assert.deepEqual(h, { alg: "EdDSA", typ: "JWT" });
  assert.deepEqual(c, { sub: G.deviceId, iat: 1_700_000_000, exp: 1_700_000_300, book_id: null });
  assert.doesNotMatch(token, /=/);
});

test("the ledger's entries are plain objects in map entries, ids 32 hex", () => {
  const ledger = new Ledger();
  const [id] = ledger.addEntry(-4250, "Groceries", G.deviceId);
  assert.match(id, /^[0-9a-f]{32}$/);
  const raw = ledger.doc.getMap("entries").get(id);
  assert.equal(Object.getPrototypeOf(raw), Object.prototype);
  const copy = new Ledger();
  copy.apply(ledger.fullState());
  assert.deepEqual(copy.entries(), ledger.entries());
  assert.equal(copy.balanceCents(), -4250);
});
