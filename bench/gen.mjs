// Load generator for the relay benchmark: one Node process drives every device socket.
//
// Usage: node gen.mjs <config.json>   (written by run.py; prints one JSON result line)
//
// Every payload is opaque: random bytes in base64, as ciphertext would be. Its first
// 12 bytes are a marker ("BPM"), the sender's index and a counter, so the first 16
// base64 characters are unique; the generator keeps a map from that prefix to the send
// time and finds the prefix in whatever frame a server delivers (a relay JSON line, a
// bare broadcast frame, or a Yjs update that carries the payload's raw bytes).
//
// Server kinds:
//   relay      docs/CONTRACT.md §4: Authorization header, crdt_operation, ack (window counts acks)
//   wsb        bare Node `ws` broadcast: the payload as a text frame
//   starlette  bare Starlette broadcast: the payload as a text frame
//   ywss       y-websocket-server: a Yjs sync "update" message setting the sender's map
//              key to the payload bytes (binary, Yjs's native form; the previous value
//              is replaced, so the server's document stays small); the server applies
//              it and broadcasts the resulting update to every socket of the room (the
//              sender's echo is ignored)
// For servers without acks a message counts as acknowledged when every other member
// of its book has received it.

import crypto from 'node:crypto'
import fs from 'node:fs'
import { performance } from 'node:perf_hooks'
import WebSocket from 'ws'
import * as Y from 'yjs'
import * as syncProtocol from 'y-protocols/sync'
import * as encoding from 'lib0/encoding'

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'))
// BENCH_NO_CORK=1: one write per frame, as before (Device.coalesce)
const COALESCE = Boolean(cfg.window) && process.env.BENCH_NO_CORK !== '1'
const MARK = Buffer.from('BPM') // base64 "QlBN"
const PREFIX_LEN = 16
const OP_HEAD = Buffer.from('{"type":"crdt_operation",')
const PAYLOAD_KEY = Buffer.from('"payload":"')
const now = () => performance.now()

// ---------- payloads ----------

const tails = new Map() // payload size -> pool of random tails, raw and in base64
function tailPool (size) {
  let pool = tails.get(size)
  if (!pool) {
    pool = []
    for (let i = 0; i < 64; i++) {
      const raw = crypto.randomBytes(size - 12)
      pool.push({ raw, b64: raw.toString('base64') })
    }
    tails.set(size, pool)
  }
  return pool
}

function payloadHead (sender, counter) {
  const head = Buffer.alloc(12)
  MARK.copy(head, 0)
  head.writeUInt32BE(sender, 3)
  head.writeUInt32BE(counter >>> 0, 7)
  return head
}

// base64 text; its first 16 characters are the unique prefix (12 is a multiple of 3)
function makePayload (sender, counter, size) {
  return payloadHead(sender, counter).toString('base64') + tailPool(size)[counter & 63].b64
}

// the same bytes, raw: Yjs carries binary natively (ContentBinary), as an app would
function makePayloadBytes (sender, counter, size) {
  const bytes = new Uint8Array(size) // a plain Uint8Array: Yjs refuses a Buffer
  bytes.set(payloadHead(sender, counter), 0)
  bytes.set(tailPool(size)[counter & 63].raw, 12)
  return bytes
}

// ---------- device keys and tokens (relay) ----------

const PKCS8_ED25519 = Buffer.from('302e020100300506032b657004220420', 'hex')
const b64url = (buf) => Buffer.from(buf).toString('base64url')

function token (dev, bookId) {
  const iat = Math.floor(Date.now() / 1000)
  const head = b64url(JSON.stringify({ alg: 'EdDSA', typ: 'JWT' }))
  const body = b64url(JSON.stringify({ sub: dev.device_id, iat, exp: iat + 3600, book_id: bookId }))
  const input = head + '.' + body
  return input + '.' + b64url(crypto.sign(null, Buffer.from(input), dev.key))
}

function loadDevices () {
  const list = JSON.parse(fs.readFileSync(cfg.devices_file, 'utf8'))
  return list.slice(0, cfg.n).map((d, i) => ({
    ...d,
    index: i,
    key: crypto.createPrivateKey({
      key: Buffer.concat([PKCS8_ED25519, Buffer.from(d.seed, 'hex')]),
      format: 'der',
      type: 'pkcs8'
    })
  }))
}

// ---------- measurement ----------

const pending = new Map() // prefix -> {t, sender, remaining}
let measuring = false
let delivered = 0
let errors = 0
let lat = new Float64Array(1 << 20)
let latN = 0
const errorSamples = []

function recordLatency (ms) {
  if (latN === lat.length) {
    const bigger = new Float64Array(lat.length * 2)
    bigger.set(lat)
    lat = bigger
  }
  lat[latN++] = ms
}

function percentile (sorted, p) {
  if (sorted.length === 0) return null
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]
}

function rssKb (pid) {
  if (!pid) return null
  try {
    const m = fs.readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+)/)
    return m ? Number(m[1]) : null
  } catch { return null }
}

function noteError (what) {
  errors++
  if (errorSamples.length < 5) errorSamples.push(String(what).slice(0, 200))
}

// ---------- devices over sockets ----------

class Device {
  constructor (index, book, meta) {
    this.index = index
    this.book = book // array of Device, shared by its members
    this.meta = meta
    this.counter = 0
    this.inflight = 0
    this.onAllDelivered = null
    this.ws = null
    this.welcome = null
    this.received = 0
    this.onMessage = null
    if (cfg.kind === 'ywss') {
      this.doc = new Y.Doc()
      this.map = this.doc.getMap('m')
      this.lastUpdate = null
      this.doc.on('update', (u) => { this.lastUpdate = u })
    }
  }

  url (query = '') {
    const room = this.meta ? this.meta.book_id : 'book' + this.bookIndex
    if (cfg.kind === 'relay') return `${cfg.url}/ws/relay/${room}${query}`
    if (cfg.kind === 'starlette') return `${cfg.url}/ws/${room}`
    return `${cfg.url}/${room}`
  }

  connect (query = '') {
    const headers = {}
    if (cfg.kind === 'relay') headers.Authorization = 'Bearer ' + token(this.meta, this.meta.book_id)
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url(query), { headers, perMessageDeflate: false, handshakeTimeout: 30000 })
      this.ws = ws
      this.closed = null
      let settled = false
      const done = (err) => {
        if (settled) return
        settled = true
        err ? reject(err) : resolve(this)
      }
      ws.on('message', (data, isBinary) => {
        if (cfg.kind === 'relay') this.onRelayFrame(data, done)
        else this.onPeerFrame(data, isBinary)
      })
      ws.on('open', () => { if (cfg.kind !== 'relay') done() })
      ws.on('close', (code, reason) => {
        this.closed = { code, reason: String(reason) }
        done(new Error(`closed ${code} ${reason}`))
      })
      ws.on('error', (e) => done(e))
    })
  }

  // An op line is known by its head, as the relay writes it, and counted by its
  // payload's prefix, as the bare broadcasts' frames are: parsing every 1.4 KB line
  // whole made this process, not the server, the limit at saturation. Other lines
  // (acks, control) are small and parsed whole.
  onRelayFrame (data, done) {
    let start = 0
    while (start < data.length) {
      let end = data.indexOf(10, start) // '\n'
      if (end === -1) end = data.length
      if (end > start) {
        if (data.compare(OP_HEAD, 0, OP_HEAD.length, start, start + OP_HEAD.length) === 0) {
          const at = data.indexOf(PAYLOAD_KEY, start) + PAYLOAD_KEY.length
          this.received++
          this.deliver(data.toString('latin1', at, at + PREFIX_LEN))
        } else {
          this.onRelayMessage(JSON.parse(data.toString('utf8', start, end)), done)
        }
      }
      start = end + 1
    }
  }

  onRelayMessage (msg, done) {
    switch (msg.type) {
      case 'crdt_operation':
        this.received++
        this.deliver(msg.payload.slice(0, PREFIX_LEN))
        break
      case 'ack':
        this.inflight--
        if (this.onAck) this.onAck(msg)
        break
      case 'welcome':
        this.welcome = msg
        break
      case 'sync_complete':
        this.syncComplete = msg
        if (this.onSyncComplete) this.onSyncComplete(msg)
        done()
        break
      case 'error':
        noteError(`${msg.code}: ${msg.message}`)
        break
    }
  }

  onPeerFrame (data, isBinary) {
    if (cfg.kind === 'ywss') {
      const at = data.indexOf(MARK)
      if (at === -1) return
      const prefix = data.toString('base64', at, at + 12)
      const entry = pending.get(prefix)
      if (entry && entry.sender === this.index) return // the server's echo to the sender
      this.received++
      this.deliver(prefix)
      return
    }
    this.received++
    this.deliver(data.toString('latin1', 0, PREFIX_LEN))
  }

  deliver (prefix) {
    const entry = pending.get(prefix)
    if (!entry) return // sent before this run kept track (catch-up) or already done
    if (measuring) {
      delivered++
      recordLatency(now() - entry.t)
    }
    if (--entry.remaining === 0) {
      pending.delete(prefix)
      const sender = entry.dev
      if (cfg.kind !== 'relay') sender.inflight--
      if (sender.onAllDelivered) sender.onAllDelivered()
    }
  }

  // The frames a device sends while Node handles one batch of reads (the ops its acks
  // or its deliveries just let into the window) leave in one write: corked at the
  // first, uncorked once every read of the batch is handled (setImmediate), for every
  // kind of server alike. One system call a frame was the generator's largest cost at
  // saturation. Only where a window is refilled: the latency workload's sends stay one
  // write each, at once.
  coalesce () {
    const sock = this.ws._socket
    if (!COALESCE || !sock || sock.writableCorked) return // ws uncorks its own at once
    sock.cork()
    setImmediate(() => sock.uncork())
  }

  send (size, key) {
    const payload = makePayload(this.index, this.counter++, size)
    const prefix = payload.slice(0, PREFIX_LEN)
    pending.set(prefix, { t: now(), sender: this.index, dev: this, remaining: this.book.length - 1 })
    this.inflight++
    this.coalesce()
    if (cfg.kind === 'relay') {
      // JSON.stringify's output, without its scan of the 1.4 KB payload for escapes
      // (base64 has none)
      const ts = Math.floor(Date.now() / 1000)
      this.ws.send(`{"type":"crdt_operation","payload":"${payload}","timestamp":${ts},"id":"${prefix}"}`)
    } else if (cfg.kind === 'ywss') {
      this.map.set(key ?? 'd' + this.index, makePayloadBytes(this.index, this.counter - 1, size))
      const enc = encoding.createEncoder()
      encoding.writeVarUint(enc, 0) // messageSync
      syncProtocol.writeUpdate(enc, this.lastUpdate)
      this.ws.send(encoding.toUint8Array(enc))
    } else {
      this.ws.send(payload)
    }
    return prefix
  }
}

function makeDevices (n) {
  const metas = cfg.kind === 'relay' ? loadDevices() : null
  const devices = []
  let book = []
  for (let i = 0; i < n; i++) {
    const d = new Device(i, book, metas ? metas[i] : null)
    d.bookIndex = Math.floor(i / cfg.book_size)
    book.push(d)
    devices.push(d)
    if (book.length === cfg.book_size) book = []
  }
  return devices
}

async function connectAll (devices, concurrency = 64) {
  let next = 0
  let failures = 0
  const failSamples = []
  async function worker () {
    while (next < devices.length) {
      const d = devices[next++]
      try {
        await d.connect()
      } catch (e) {
        failures++
        if (failSamples.length < 5) failSamples.push(String(e.message || e).slice(0, 200))
      }
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker))
  return { failures, failSamples }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

function summary (extra) {
  const sorted = lat.subarray(0, latN).sort()
  return {
    kind: cfg.kind,
    workload: cfg.workload,
    delivered,
    errors,
    error_samples: errorSamples,
    p50_ms: percentile(sorted, 0.5),
    p99_ms: percentile(sorted, 0.99),
    p999_ms: percentile(sorted, 0.999),
    ...extra
  }
}

// close codes of sockets the server closed during the run, e.g. {"1013": 3}
function closeCodes (devices) {
  const codes = {}
  for (const d of devices) if (d.closed) codes[d.closed.code] = (codes[d.closed.code] || 0) + 1
  return codes
}

function closeAll (devices) {
  for (const d of devices) if (d.ws) d.ws.terminate()
}

// ---------- workloads ----------

async function saturation () {
  const devices = makeDevices(cfg.n)
  const conn = await connectAll(devices)
  if (conn.failures) throw new Error(`connect failures: ${conn.failures} ${conn.failSamples}`)
  await sleep(300) // let presence and sync chatter settle
  const pump = (d) => {
    while (d.inflight < cfg.window && d.ws.readyState === WebSocket.OPEN) d.send(cfg.payload_bytes)
  }
  for (const d of devices) {
    if (cfg.kind === 'relay') d.onAck = () => pump(d)
    else d.onAllDelivered = () => pump(d)
  }
  devices.forEach(pump)
  await sleep(cfg.warmup_s * 1000)
  measuring = true
  const t0 = now()
  await sleep(cfg.measure_s * 1000)
  measuring = false
  const seconds = (now() - t0) / 1000
  const rss = rssKb(cfg.server_pid)
  const closedEarly = devices.filter((d) => d.closed).length
  const codes = closeCodes(devices)
  closeAll(devices)
  return summary({ seconds, rate: delivered / seconds, rss_kb: rss, closed_early: closedEarly, close_codes: codes })
}

async function latency () {
  const devices = makeDevices(cfg.n)
  const conn = await connectAll(devices)
  if (conn.failures) throw new Error(`connect failures: ${conn.failures} ${conn.failSamples}`)
  await sleep(500)
  const total = cfg.warmup_s + cfg.measure_s
  const perSecond = cfg.n * cfg.rate
  const start = now()
  let sent = 0
  let t0 = null
  await new Promise((resolve) => {
    const tick = () => {
      const elapsed = (now() - start) / 1000
      if (!measuring && t0 === null && elapsed >= cfg.warmup_s) { measuring = true; t0 = now() }
      if (elapsed >= total) { measuring = false; resolve(); return }
      const due = Math.floor(elapsed * perSecond)
      while (sent < due) {
        const d = devices[sent % cfg.n]
        if (d.ws.readyState === WebSocket.OPEN) d.send(cfg.payload_bytes)
        sent++
      }
      setTimeout(tick, 2)
    }
    tick()
  })
  const seconds = (now() - t0) / 1000
  await sleep(200)
  const rss = rssKb(cfg.server_pid)
  const closedEarly = devices.filter((d) => d.closed).length
  const codes = closeCodes(devices)
  closeAll(devices)
  return summary({
    close_codes: codes,
    seconds, rate: delivered / seconds, offered: perSecond, expected_rate: perSecond * (cfg.book_size - 1), rss_kb: rss, closed_early: closedEarly
  })
}

async function idle () {
  const devices = makeDevices(cfg.n)
  await sleep(200)
  const rss0 = rssKb(cfg.server_pid)
  const first = devices.slice(0, 1000)
  const c1 = await connectAll(first, 50)
  await sleep(1000)
  const rss1k = rssKb(cfg.server_pid)
  const c2 = await connectAll(devices.slice(1000), 50)
  await sleep(cfg.hold_s * 1000)
  const rssN = rssKb(cfg.server_pid)
  const open = devices.filter((d) => d.ws && d.ws.readyState === WebSocket.OPEN).length
  const failures = c1.failures + c2.failures
  closeAll(devices)
  return {
    kind: cfg.kind,
    workload: 'idle',
    n: cfg.n,
    failures,
    fail_samples: [...c1.failSamples, ...c2.failSamples],
    open_after_hold: open,
    rss0_kb: rss0,
    rss1k_kb: rss1k,
    rssN_kb: rssN,
    mb_per_1000: rss0 && rssN ? (rssN - rss0) / 1024 / (cfg.n / 1000) : null,
    // past the first 1,000: what each further connection costs, warm-up excluded
    mb_per_1000_marginal: rss1k && rssN && cfg.n > 1000 ? (rssN - rss1k) / 1024 / ((cfg.n - 1000) / 1000) : null
  }
}

// Connect n devices, print a line once they are all open, hold them until stdin ends
// (idle_heap.py measures the server meanwhile), then close them.
async function hold () {
  const devices = makeDevices(cfg.n)
  const c = await connectAll(devices, 50)
  const open = devices.filter((d) => d.ws && d.ws.readyState === WebSocket.OPEN).length
  process.stdout.write(JSON.stringify({ held: open, failures: c.failures, fail_samples: c.failSamples }) + '\n')
  await new Promise((resolve) => { process.stdin.on('end', resolve); process.stdin.resume() })
  closeAll(devices)
  await sleep(200)
  return { workload: 'hold', n: cfg.n, held: open, failures: c.failures }
}

// A device resumes after `missed` ops were sent while it was away; the time from
// opening its socket to holding all of them (relay: sync_complete after the replay;
// ywss: the sync step 2 answering its state vector, which holds every missed update).
async function catchup () {
  const times = []
  for (let b = 0; b < cfg.books; b++) {
    const devices = makeDevices(cfg.book_size * (b + 1)).slice(cfg.book_size * b)
    const [away, sender] = devices
    await away.connect()
    const since = away.welcome ? away.welcome.latest_seq : 0
    const epoch = away.welcome ? away.welcome.epoch : null
    away.ws.close()
    await sleep(100)
    await sender.connect()
    let acked = 0
    await new Promise((resolve) => {
      const pump = () => {
        while (sender.inflight < cfg.window && sender.counter < cfg.missed) {
          sender.send(cfg.payload_bytes, 'k' + sender.counter)
        }
        if (sender.counter >= cfg.missed && sender.inflight === 0) resolve()
      }
      sender.onAck = () => { acked++; pump() }
      // without acks: the server applied an update once its echo comes back
      sender.onAllDelivered = pump
      if (cfg.kind === 'ywss') {
        sender.onPeerFrame = function (data) {
          const at = data.indexOf(MARK)
          if (at === -1) return
          const prefix = data.toString('base64', at, at + 12)
          if (!pending.has(prefix)) return
          pending.delete(prefix)
          this.inflight--
          pump()
        }
      }
      pump()
    })
    pending.clear()
    const t0 = now()
    if (cfg.kind === 'relay') {
      away.received = 0
      await away.connect(`?since=${since}&epoch=${encodeURIComponent(epoch)}`)
      const ms = now() - t0
      if (away.received !== cfg.missed) throw new Error(`replayed ${away.received} of ${cfg.missed}`)
      times.push(ms)
    } else {
      await away.connect()
      const got = new Promise((resolve) => {
        const orig = away.onPeerFrame.bind(away)
        away.onPeerFrame = (data, isBinary) => {
          if (data[0] === 0 && data[1] === 1) resolve(data)
          else orig(data, isBinary)
        }
      })
      const enc = encoding.createEncoder()
      encoding.writeVarUint(enc, 0)
      syncProtocol.writeSyncStep1(enc, away.doc)
      away.ws.send(encoding.toUint8Array(enc))
      const step2 = await got
      const ms = now() - t0
      // check that it really holds every missed op
      const dec = step2.subarray(2)
      const len = readVarUint(dec)
      Y.applyUpdate(away.doc, dec.subarray(len.size, len.size + len.value))
      if (away.map.size !== cfg.missed) throw new Error(`state holds ${away.map.size} of ${cfg.missed}`)
      times.push(ms)
    }
    closeAll(devices)
    await sleep(100)
  }
  times.sort((a, b) => a - b)
  return {
    kind: cfg.kind, workload: 'catchup', missed: cfg.missed, books: cfg.books,
    ms: times, max_ms: times[times.length - 1], rss_kb: rssKb(cfg.server_pid)
  }
}

function readVarUint (buf) {
  let value = 0
  let mult = 1
  let size = 0
  for (;;) {
    const b = buf[size++]
    value += (b & 0x7f) * mult
    mult *= 128
    if (b < 0x80) return { value, size }
  }
}

// POST /api/v1/devices for every device: the first of each book creates it with its
// book_id, the others register bookless (run.py then makes them members).
async function register () {
  const devices = loadDevices()
  let next = 0
  let failures = 0
  const samples = []
  async function worker () {
    while (next < devices.length) {
      const d = devices[next++]
      const body = { public_key: d.public_key }
      if (d.first) body.book_id = d.book_id
      const res = await fetch(`${cfg.http}/api/v1/devices`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: 'Bearer ' + token(d, null) },
        body: JSON.stringify(body)
      })
      if (res.status !== 201 && res.status !== 200) {
        failures++
        if (samples.length < 5) samples.push(`${res.status} ${(await res.text()).slice(0, 200)}`)
      } else await res.arrayBuffer()
    }
  }
  const t0 = now()
  await Promise.all(Array.from({ length: 16 }, worker))
  return { workload: 'register', n: devices.length, failures, samples, seconds: (now() - t0) / 1000 }
}

const workloads = { saturation, latency, idle, catchup, register, hold }
workloads[cfg.workload]().then(
  (result) => { process.stdout.write(JSON.stringify(result) + '\n'); process.exit(0) },
  (err) => { process.stdout.write(JSON.stringify({ error: String(err.stack || err) }) + '\n'); process.exit(1) }
)
