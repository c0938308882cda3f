// The peer figure of join.py: y-websocket-server with a document of N ledger entries
// (the reference client's shape: map "entries", entry id -> {amount_cents, currency,
// note, by, at_ms}), and a new client that syncs it whole.
//
// Usage: node join-ywss.mjs <ws://host:port> <entries>   (prints one JSON line)
//
// A writer sends one update per entry (as a phone would), waits until the server has
// them all (its own sync step 1 answered with nothing missing), then a new client
// connects: time from its connect until its document holds every entry, and the bytes
// the server sent it.

import crypto from 'node:crypto'
import { performance } from 'node:perf_hooks'
import WebSocket from 'ws'
import * as Y from 'yjs'
import * as syncProtocol from 'y-protocols/sync'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'

const [url, countArg] = process.argv.slice(2)
const count = Number(countArg)
const room = 'join-' + crypto.randomBytes(6).toString('hex')

function connect (doc, onBytes) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${url}/${room}`, { perMessageDeflate: false })
    ws.binaryType = 'nodebuffer'
    ws.on('message', (data) => {
      onBytes(data.length)
      const decoder = decoding.createDecoder(new Uint8Array(data))
      if (decoding.readVarUint(decoder) !== 0) return // awareness and the like
      const reply = encoding.createEncoder()
      encoding.writeVarUint(reply, 0)
      syncProtocol.readSyncMessage(decoder, reply, doc, 'server')
      if (encoding.length(reply) > 1) ws.send(encoding.toUint8Array(reply))
    })
    ws.on('open', () => {
      const enc = encoding.createEncoder()
      encoding.writeVarUint(enc, 0)
      syncProtocol.writeSyncStep1(enc, doc)
      ws.send(encoding.toUint8Array(enc))
      resolve(ws)
    })
    ws.on('error', reject)
  })
}

function sendUpdate (ws, update) {
  const enc = encoding.createEncoder()
  encoding.writeVarUint(enc, 0)
  syncProtocol.writeUpdate(enc, update)
  ws.send(encoding.toUint8Array(enc))
}

const writerDoc = new Y.Doc()
const writer = await connect(writerDoc, () => {})
const entries = writerDoc.getMap('entries')
const by = crypto.randomBytes(16).toString('hex')
for (let n = 0; n < count; n++) {
  const before = Y.encodeStateVector(writerDoc)
  entries.set(crypto.randomBytes(16).toString('hex'), {
    amount_cents: -(n % 9000) - 100, currency: 'EUR', note: `entry ${n}`, by, at_ms: Date.now()
  })
  sendUpdate(writer, Y.encodeStateAsUpdate(writerDoc, before))
  if (n % 500 === 499) await new Promise((resolve) => setImmediate(resolve))
}
// The server has everything once a fresh observer's sync brings every entry.
async function syncUntilComplete () {
  const doc = new Y.Doc()
  let bytes = 0
  const started = performance.now()
  const ws = await connect(doc, (n) => { bytes += n })
  await new Promise((resolve) => {
    const check = () => (doc.getMap('entries').size >= count ? resolve() : setTimeout(check, 1))
    check()
  })
  const seconds = (performance.now() - started) / 1000
  ws.close()
  return { seconds, bytes }
}
for (;;) { // wait until the writer's updates have all reached the server
  const probe = await syncUntilComplete().catch(() => null)
  if (probe) break
}
writer.close()
const result = await syncUntilComplete()
process.stdout.write(JSON.stringify({
  ops: count, seconds: Number(result.seconds.toFixed(3)), bytes: result.bytes
}) + '\n')
process.exit(0)
