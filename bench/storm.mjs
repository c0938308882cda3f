// Reconnect storm generator: every device connects, goes live, and after the server
// closes its socket (SIGTERM: 1012, or a killed peer) reconnects as docs/CONTRACT.md §4
// tells apps to: attempt n waits a random time in [max(1, c/2), c] s with
// c = min(60, 2^(n+1)), reset after a `welcome`, and resumes with `since`/`epoch`.
//
// Usage: node storm.mjs <config.json>   (written by storm.py)
// Talks to storm.py over stdout: one `{"phase":"live"}` line once every device is
// live (storm.py then sends SIGTERM), one result line at the end. Times are wall-clock
// milliseconds (Date.now()), so storm.py can set them against its own.
//
// relay: each device sends one op and waits for its ack and its 3 book-mates' ops, so
// `since` is 4 when the storm comes; after the storm each sends one more and the check
// is that every device holds seqs 1..8 of its book under the same epoch, no `sync_gap`.
// ywss: no auth, no acks, no persistence; "back" is its sync step 2 after reconnecting.

import crypto from 'node:crypto'
import fs from 'node:fs'
import WebSocket from 'ws'
import * as Y from 'yjs'
import * as syncProtocol from 'y-protocols/sync'
import * as encoding from 'lib0/encoding'

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'))
const RELAY = cfg.kind === 'relay'
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const PKCS8_ED25519 = Buffer.from('302e020100300506032b657004220420', 'hex')
const b64url = (buf) => Buffer.from(buf).toString('base64url')
const GIVE_UP = new Set([4403, 4410])

function token (dev) {
  const iat = Math.floor(Date.now() / 1000)
  const head = b64url(JSON.stringify({ alg: 'EdDSA', typ: 'JWT' }))
  const body = b64url(JSON.stringify({ sub: dev.device_id, iat, exp: iat + 3600, book_id: dev.book_id }))
  const input = head + '.' + body
  return input + '.' + b64url(crypto.sign(null, Buffer.from(input), dev.key))
}

function backoffMs (n) {
  const c = Math.min(60, 2 ** (n + 1))
  const lo = Math.max(1, c / 2)
  return (lo + Math.random() * (c - lo)) * 1000
}

const tally = (map, key) => map.set(key, (map.get(key) || 0) + 1)
const refusals = new Map() // close code before a welcome, HTTP status, or socket error
const closes = new Map() // close codes of live sockets
let armed = false // every device live: a close from now on is the storm
let storming = false
let firstClose = null
let welcomes = [] // wall ms of each welcome after the storm began
let gaps = 0
let epochChanged = 0
let behind = 0 // a resumed welcome whose latest_seq was below the device's since
let givenUp = 0
let errors = 0

class Device {
  constructor (index, meta) {
    this.index = index
    this.meta = meta
    this.urlIndex = cfg.split ? index % cfg.urls.length : 0
    this.seqs = new Set() // seqs of its book it holds (its acks and its book-mates' ops)
    this.since = 0
    this.epoch = null
    this.n = 0 // backoff attempt
    this.attempts = 0 // connects after the storm began
    this.back = null // wall ms of its sync_complete after the storm
    this.live = false
    this.onEvent = null
    if (!RELAY) this.doc = new Y.Doc()
  }

  url () {
    const base = cfg.urls[this.urlIndex]
    const room = this.meta ? this.meta.book_id : 'book' + Math.floor(this.index / cfg.book_size)
    if (!RELAY) return `${base}/${room}`
    const q = this.since > 0 ? `?since=${this.since}&epoch=${encodeURIComponent(this.epoch)}` : ''
    return `${base}/ws/relay/${room}${q}`
  }

  connect () {
    if (storming) this.attempts++
    const headers = RELAY ? { Authorization: 'Bearer ' + token(this.meta) } : {}
    const ws = new WebSocket(this.url(), { headers, perMessageDeflate: false, handshakeTimeout: 30000 })
    this.ws = ws
    this.live = false
    let welcomed = false
    ws.on('unexpected-response', (req, res) => {
      tally(refusals, 'HTTP ' + res.statusCode)
      res.resume()
      ws.terminate()
    })
    ws.on('error', (e) => { if (!welcomed && e.code) tally(refusals, e.code) })
    ws.on('open', () => {
      if (RELAY) return
      welcomed = true
      if (storming) welcomes.push(Date.now())
      const enc = encoding.createEncoder()
      encoding.writeVarUint(enc, 0)
      syncProtocol.writeSyncStep1(enc, this.doc)
      ws.send(encoding.toUint8Array(enc))
    })
    ws.on('message', (data) => {
      if (!RELAY) {
        if (data[0] === 0 && data[1] === 1 && !this.live) this.complete()
        return
      }
      for (const line of data.toString().split('\n')) {
        if (!line) continue
        const msg = JSON.parse(line)
        if (msg.type === 'welcome') {
          welcomed = true
          this.n = 0
          if (storming) welcomes.push(Date.now())
          if (this.epoch !== null && msg.epoch !== this.epoch) epochChanged++
          if (msg.latest_seq < this.since) behind++
          this.epoch = msg.epoch
        } else if (msg.type === 'sync_gap') {
          gaps++
        } else if (msg.type === 'sync_complete') {
          this.complete()
        } else if (msg.type === 'crdt_operation' || msg.type === 'ack') {
          this.seqs.add(msg.seq)
          if (this.onEvent) this.onEvent()
        } else if (msg.type === 'error') {
          errors++
        }
      }
    })
    ws.on('close', (code) => {
      if (this.ws !== ws) return
      if (armed && !storming) { storming = true; firstClose = Date.now() }
      if (!welcomed) {
        if (code !== 1006) tally(refusals, 'close ' + code)
        if (GIVE_UP.has(code)) { givenUp++; return }
      } else {
        tally(closes, code)
      }
      this.live = false
      if (cfg.move && storming) this.urlIndex = cfg.urls.length - 1
      setTimeout(() => this.connect(), backoffMs(welcomed ? 0 : this.n++))
    })
  }

  complete () {
    this.live = true
    if (storming && this.back === null) {
      this.back = Date.now()
      stormDone()
    }
    if (this.onEvent) this.onEvent()
  }

  // the highest N such that it holds seqs 1..N
  position () {
    let n = 0
    while (this.seqs.has(n + 1)) n++
    return n
  }

  sendOp (id) {
    const payload = crypto.randomBytes(cfg.payload_bytes).toString('base64')
    this.ws.send(JSON.stringify({ type: 'crdt_operation', payload, timestamp: Math.floor(Date.now() / 1000), id }))
  }
}

function until (devices, test, timeoutMs) {
  return new Promise((resolve, reject) => {
    let left = devices.filter((d) => !test(d)).length
    if (left === 0) return resolve()
    const timer = setTimeout(() => reject(new Error(`timed out: ${left} devices not there`)), timeoutMs)
    for (const d of devices) {
      let done = test(d)
      d.onEvent = () => {
        if (done || !test(d)) return
        done = true
        d.onEvent = null
        if (--left === 0) { clearTimeout(timer); resolve() }
      }
    }
  })
}

function loadDevices () {
  if (!RELAY) return Array.from({ length: cfg.n }, (_, i) => new Device(i, null))
  const list = JSON.parse(fs.readFileSync(cfg.devices_file, 'utf8')).slice(0, cfg.n)
  return list.map((d, i) => new Device(i, {
    ...d,
    key: crypto.createPrivateKey({
      key: Buffer.concat([PKCS8_ED25519, Buffer.from(d.seed, 'hex')]), format: 'der', type: 'pkcs8'
    })
  }))
}

let devices = []
let storm = null
let stormResolve = null
let waiting = 0 // stormy devices not back yet
function stormDone () {
  if (storm && --waiting === 0) stormResolve()
}

async function main () {
  devices = loadDevices()
  // Going live: 64 connects at a time, each counted once against the connect limit.
  let next = 0
  const t0 = Date.now()
  await Promise.all(Array.from({ length: 64 }, async () => {
    while (next < devices.length) {
      const d = devices[next++]
      await new Promise((resolve) => { d.onEvent = () => { if (d.live) resolve() }; d.connect() })
      d.onEvent = null
    }
  }))
  const connectS = (Date.now() - t0) / 1000
  if (RELAY) {
    const size = cfg.book_size
    for (const d of devices) d.sendOp('a' + d.index)
    await until(devices, (d) => d.position() >= size, 60000)
    for (const d of devices) d.since = d.position()
  }
  // The devices that will lose their socket: all, or one instance's half when rolling.
  for (const d of devices) d.stormy = !cfg.move || d.urlIndex === 0
  waiting = devices.filter((d) => d.stormy).length
  storm = new Promise((resolve) => { stormResolve = resolve })
  armed = true
  process.stdout.write(JSON.stringify({ phase: 'live', connect_s: connectS }) + '\n')
  await Promise.race([storm, sleep(cfg.timeout_s * 1000)])
  const back = devices.filter((d) => d.stormy && d.back !== null).length
  const stormy = devices.filter((d) => d.stormy)
  const lastBack = Math.max(...stormy.map((d) => d.back || 0))
  let post = null
  if (RELAY && back === stormy.length) {
    // Nothing lost: every device sends one more op; all must end holding 1..8.
    for (const d of devices) d.sendOp('b' + d.index)
    try {
      await until(devices, (d) => d.position() >= 2 * cfg.book_size, 60000)
      post = 'ok'
    } catch (e) {
      post = String(e.message)
    }
  }
  const attempts = stormy.map((d) => d.attempts).sort((a, b) => a - b)
  welcomes.sort((a, b) => a - b)
  const perSecond = new Map()
  for (const t of welcomes) tally(perSecond, Math.floor((t - welcomes[0]) / 1000))
  return {
    kind: cfg.kind,
    n: devices.length,
    moved: stormy.length,
    back,
    connect_s: connectS,
    first_close_ms: firstClose,
    last_back_ms: lastBack,
    first_welcome_ms: welcomes[0] || null,
    welcomes: welcomes.length,
    peak_welcomes_per_s: Math.max(0, ...perSecond.values()),
    welcomes_by_second: Array.from({ length: Math.max(0, ...perSecond.keys()) + 1 }, (_, i) => perSecond.get(i) || 0),
    refusals: Object.fromEntries(refusals),
    closes: Object.fromEntries(closes),
    attempts_mean: attempts.reduce((a, b) => a + b, 0) / attempts.length,
    attempts_max: attempts[attempts.length - 1],
    attempts_hist: Object.fromEntries(attempts.reduce((m, a) => tally(m, a), new Map())),
    gaps,
    epoch_changed: epochChanged,
    behind,
    given_up: givenUp,
    errors,
    post
  }
}

main().then(
  (result) => { process.stdout.write(JSON.stringify(result) + '\n'); process.exit(0) },
  (err) => { process.stdout.write(JSON.stringify({ error: String(err.stack || err) }) + '\n'); process.exit(1) }
)
