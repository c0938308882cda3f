// A TypeScript device and a Python reference-client device share books both ways,
// through a real server: pairing in each direction, ops, offline and resume, photos,
// and identical ledgers at the end.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Device, Identity, runGenerator, runJoiner, invite, b64, unb64, randomBytes } from "../dist/index.js";
import { PyDevice } from "./py_device.mjs";
import { startServer } from "./server.mjs";

let server;
const closing = [];
before(async () => {
  server = await startServer();
});
after(async () => {
  for (const c of closing.reverse()) await c();
  await server.stop();
});

function tsDevice(name) {
  const device = new Device(server.url, Identity.generate(), { name });
  closing.push(() => device.close());
  return device;
}

function pyDevice() {
  const py = new PyDevice(server.url);
  closing.push(() => py.close());
  return py;
}

/** The TS side's compare callback: the users look at both phones. */
function compareWith(py, shown) {
  return async (code) => {
    shown.ts = code;
    const theirs = await py.nextSas();
    shown.py = theirs;
    await py.call("answer_sas", { match: theirs === code });
    return theirs === code;
  };
}

async function sameLedgers(ts, py, count) {
  await py.call("wait_entries", { count });
  await ts.waitUntil(() => ts.entries().length >= count, 15_000);
  const fromPy = await py.call("entries");
  assert.equal(fromPy.length, count);
  assert.deepEqual(ts.entries(), fromPy);
  return fromPy;
}

test("Python makes the book, TypeScript joins: ops, offline, resume, photos", async () => {
  const py = pyDevice();
  const ts = tsDevice("ts");
  const bookId = await py.call("create_book");
  await ts.register();

  const code = await py.call("invite");
  assert.match(code, /^\d{6}$/);
  const shown = {};
  const [generated, joined] = await Promise.all([py.call("run_generator"), runJoiner(ts, code, compareWith(py, shown))]);
  assert.equal(shown.ts, shown.py);
  assert.equal(generated.sas, joined.sas);
  assert.equal(joined.bookId, bookId);
  assert.equal(ts.bookId, bookId);
  assert.equal(generated.peer_device_id, ts.deviceId);

  await py.call("go_online");
  ts.goOnline();
  await py.call("add_entry", { amount_cents: -4250, note: "Groceries" });
  ts.addEntry(-1299, "Pharmacy");
  await sameLedgers(ts, py, 2);
  await ts.waitSynced(10_000);

  // TypeScript goes offline; both keep writing.
  await ts.goOffline();
  await py.call("add_entry", { amount_cents: -6120, note: "Electricity bill" });
  await py.call("add_entry", { amount_cents: 250000, note: "Salary" });
  ts.addEntry(-380, "Bakery");
  assert.equal(ts.state.outbox.size, 1, "the offline entry waits in the outbox");
  ts.goOnline();
  await sameLedgers(ts, py, 5);
  await ts.waitSynced(10_000);
  assert.equal(ts.state.outbox.size, 0);

  // Python goes offline; TypeScript writes; Python resumes.
  await py.call("go_offline");
  ts.addEntry(-999, "Cinema");
  await ts.waitSynced(10_000);
  await py.call("go_online");
  const ledger = await sameLedgers(ts, py, 6);

  // Photos both ways: each device opens what the other sealed.
  const tsPhoto = randomBytes(20_000);
  const tsEntry = ledger.find((e) => e.note === "Bakery").entryId;
  const tsPhotoId = await ts.attachPhoto(tsEntry, tsPhoto);
  await py.call("wait_synced");
  const pyEntry = ledger.find((e) => e.note === "Groceries").entryId;
  const pyPhoto = randomBytes(12_345);
  const pyPhotoId = await py.call("attach_photo", { entry_id: pyEntry, data: b64(pyPhoto) });
  await ts.waitUntil(() => ts.entries().some((e) => e.photoId === pyPhotoId), 15_000);
  await new Promise((r) => setTimeout(r, 300));
  const final = await py.call("entries");
  assert.deepEqual(ts.entries(), final);
  assert.equal(final.find((e) => e.entryId === tsEntry).photoId, tsPhotoId);
  assert.deepEqual(unb64(await py.call("fetch_photo", { photo_id: tsPhotoId })), tsPhoto);
  assert.deepEqual(await ts.fetchPhoto(pyPhotoId), pyPhoto);
  assert.equal(ts.undecryptable, 0);
});

test("TypeScript makes the book, Python joins", async () => {
  const ts = tsDevice("ts-g");
  const py = pyDevice();
  const bookId = await ts.createBook();
  await py.call("register");
  const invitation = await invite(ts);
  const shown = {};
  const [generated, joined] = await Promise.all([
    runGenerator(ts, invitation, compareWith(py, shown)),
    py.call("run_joiner", { code: invitation.shortCode }),
  ]);
  assert.equal(shown.ts, shown.py);
  assert.equal(generated.sas, joined.sas);
  assert.equal(joined.book_id, bookId);
  assert.equal(generated.peerDeviceId, (await py.call("info")).device_id);

  ts.addEntry(-2000, "Written before the other phone came online");
  ts.goOnline();
  await ts.waitSynced(10_000);
  await py.call("go_online");
  await py.call("add_entry", { amount_cents: -700, note: "Coffee" });
  await sameLedgers(ts, py, 2);
});
