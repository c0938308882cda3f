/**
 * Pairing a new phone into a book, driven through `/pairing/exchange` (docs/CONTRACT.md
 * §5). G generates the code and holds the book; J types the code.
 *   G: 0x01 ‖ commitment   J: 0x02 ‖ n_J   G: 0x03 ‖ n_G   both: SAS   G: confirm, 0x04 ‖ box
 * The book key is never deposited before the users said the codes match, never in clear.
 */
import type { ExchangeAnswer } from "./api.js";
import { unb64 } from "./bytes.js";
import type { Device } from "./device.js";
import { deviceIdOf } from "./identity.js";
import * as S from "./sas.js";

export const POLL_MS = 200;

/** Shows the six digits to the user and resolves true when the user says both phones show the same. */
export type CompareSas = (code: string) => Promise<boolean>;

export interface Invitation {
  shortCode: string;
  pairingId: string;
  expiresAt: string;
}

export interface Paired {
  sas: string;
  peerDeviceId: string;
  bookId: string;
}

/** G: ask for a 6-digit code to show to the new phone's user. */
export async function invite(device: Device): Promise<Invitation> {
  const made = await device.api.pairingGenerate();
  return { shortCode: made.short_code, pairingId: made.pairing_id, expiresAt: made.expires_at };
}

function messages(answer: ExchangeAnswer): Map<number, Uint8Array> {
  const found = new Map<number, Uint8Array>();
  for (const text of answer.payloads ?? []) {
    const [tag, body] = S.parse(unb64(text));
    if (!found.has(tag)) found.set(tag, body);
  }
  return found;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Poll until the peer deposited `tag` (and the session has `status`); with tag null, until the peer's key is known. */
async function waitFor(device: Device, pairingId: string, tag: number | null, withinMs: number, status?: string): Promise<[ExchangeAnswer, Uint8Array]> {
  const deadline = Date.now() + withinMs;
  for (;;) {
    const answer = await device.api.pairingExchange(pairingId);
    if (answer.status === "rejected") throw new S.PairingAbort("the other side rejected the pairing");
    if (status === undefined || answer.status === status) {
      if (tag === null && answer.peer_public_key) return [answer, new Uint8Array()];
      const body = tag !== null ? messages(answer).get(tag) : undefined;
      if (body !== undefined) return [answer, body];
    }
    if (Date.now() > deadline) throw new S.PairingAbort("the other phone did not answer in time");
    await sleep(POLL_MS);
  }
}

/** The peer's key, checked against its self-certifying id. */
function peerKey(answer: { peer_public_key?: string | null; peer_device_id?: string | null }): Uint8Array {
  const key = unb64(String(answer.peer_public_key));
  if (key.length !== 32 || deviceIdOf(key) !== answer.peer_device_id) throw new S.PairingAbort("the peer's key does not match its device_id");
  return key;
}

/** G, once the code is shown: commit, reveal, show the SAS, confirm, box the book key to J. */
export async function runGenerator(device: Device, invitation: Invitation, compare: CompareSas, withinMs = 300_000): Promise<Paired> {
  const pid = invitation.pairingId;
  const [matched] = await waitFor(device, pid, null, withinMs);
  const pkG = device.identity.publicKey;
  const pkJ = peerKey(matched);
  const nG = S.newNonce();
  await device.api.pairingExchange(pid, S.commitMessage(pkG, nG));
  const [, nJ] = await waitFor(device, pid, S.TAG_NONCE, withinMs);
  await device.api.pairingExchange(pid, S.revealMessage(nG));
  const code = S.sas(pkG, pkJ, nG, nJ);
  if (!(await compare(code))) {
    await device.api.pairingConfirm(pid, false);
    throw new S.PairingAbort("the codes did not match: pairing rejected");
  }
  await device.api.pairingConfirm(pid, true);
  await device.api.pairingExchange(pid, S.sealBookKey(device.bookKey, device.identity.seed, pkJ));
  return { sas: code, peerDeviceId: deviceIdOf(pkJ), bookId: device.requireBook() };
}

/** J (registered, in no book): verify the code, reveal n_J, check G's reveal, show the SAS, receive the book key. */
export async function runJoiner(device: Device, shortCode: string, compare: CompareSas, withinMs = 300_000): Promise<Paired> {
  const verified = await device.api.pairingVerify(shortCode);
  const pid = String(verified.pairing_id);
  const bookId = String(verified.book_id);
  const pkG = peerKey(verified);
  const pkJ = device.identity.publicKey;
  const [, commit] = await waitFor(device, pid, S.TAG_COMMIT, withinMs);
  const nJ = S.newNonce();
  await device.api.pairingExchange(pid, S.nonceMessage(nJ));
  const [, nG] = await waitFor(device, pid, S.TAG_REVEAL, withinMs);
  S.checkReveal(commit, pkG, nG);
  const code = S.sas(pkG, pkJ, nG, nJ);
  if (!(await compare(code))) throw new S.PairingAbort("the codes did not match: not joining");
  const [, boxed] = await waitFor(device, pid, S.TAG_BOOK_KEY, withinMs, "confirmed");
  const bookKey = S.openBookKey(Uint8Array.of(S.TAG_BOOK_KEY, ...boxed), device.identity.seed, pkG);
  if (bookKey.length !== 32) throw new S.PairingAbort("the book key has the wrong length");
  device.joinBook(bookId, bookKey);
  return { sas: code, peerDeviceId: deviceIdOf(pkG), bookId };
}
