/**
 * The relay socket for one device (docs/CONTRACT.md §4): connect, resume from the
 * device's position, relay ops, keep the outbox until acked, re-authenticate before the
 * token expires, and reconnect with jittered backoff (1 s … 60 s). Never reconnects
 * after 4403 (revoked / not a member), 4410 (book erased) or 4409 (replaced). Never
 * puts a token in the URL.
 */
import type { Device } from "./device.js";

export const FINAL_CLOSE_CODES: Record<number, string> = {
  4403: "revoked or not a member",
  4410: "book erased",
  4409: "replaced",
};

/** Jittered exponential waits: attempt n waits a random time in [max(base, c/2), c], c = min(cap, base·2^(n+1)). */
export class Backoff {
  attempt = 0;
  constructor(
    readonly baseS = 1,
    readonly capS = 60,
    private readonly random: () => number = Math.random,
  ) {}
  nextDelayS(): number {
    const ceiling = Math.min(this.capS, this.baseS * 2 ** (this.attempt + 1));
    const floor = Math.max(this.baseS, ceiling / 2);
    this.attempt += 1;
    return floor + this.random() * (ceiling - floor);
  }
  reset(): void {
    this.attempt = 0;
  }
}

/** The subset of the WebSocket API the session uses (browsers, React Native, `ws`). */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: any) => void) | null;
  send(text: string): void;
  close(code?: number, reason?: string): void;
}

/** Opens a socket to `url` authenticated with `token`. */
export type WebSocketFactory = (url: string, token: string) => WebSocketLike | Promise<WebSocketLike>;

const isNode = typeof process !== "undefined" && !!(process as any).versions?.node && typeof (globalThis as any).window === "undefined";

/**
 * The default: in a browser (or wherever headers cannot be set) the subprotocols
 * `relay.v1` + `bearer.<jwt>`; in Node the `ws` package with an Authorization header.
 * React Native apps may pass `(url, token) => new WebSocket(url, undefined, {headers:
 * {Authorization: "Bearer " + token}})`, or use this default's subprotocols.
 */
export const defaultWebSocket: WebSocketFactory = async (url, token) => {
  if (isNode) {
    const ws = (await import("ws")).default;
    return new ws(url, { headers: { Authorization: "Bearer " + token }, maxPayload: 8 * 2 ** 20 }) as unknown as WebSocketLike;
  }
  return subprotocolWebSocket(url, token);
};

export function subprotocolWebSocket(url: string, token: string): WebSocketLike {
  const Ctor = (globalThis as any).WebSocket;
  if (!Ctor) throw new Error("no WebSocket in this environment: pass a webSocket factory");
  return new Ctor(url, ["relay.v1", "bearer." + token]) as WebSocketLike;
}

export function wsUrl(serverUrl: string, bookId: string, since: number, epoch: string | null): string {
  const base = serverUrl.replace(/\/+$/, "").replace(/^http/, "ws");
  const query = new URLSearchParams({ since: String(since) });
  if (epoch !== null && since > 0) query.set("epoch", epoch);
  return `${base}/ws/relay/${encodeURIComponent(bookId)}?${query}`;
}

export interface SessionOptions {
  backoff?: Backoff;
  tokenLifetimeS?: number;
  webSocket?: WebSocketFactory;
  /** Seconds between our `ping` messages; no message for 2.5 of them drops the socket. */
  pingIntervalS?: number;
}

/** Runs until `stop()` or a final close code; `live` between sync_complete and the next disconnect. */
export class RelaySession {
  live = false;
  stoppedReason: string | null = null;
  onlinePeers = new Set<string>();
  connects = 0;
  tokensRefreshed = 0;
  readonly backoff: Backoff;
  private readonly tokenLifetimeS: number;
  private readonly webSocket: WebSocketFactory;
  private readonly pingIntervalS: number;
  private ws: WebSocketLike | null = null;
  private stopping = false;
  private needState = false;
  private sent = new Set<string>();
  private tokenExpS = 0;
  private timers: ReturnType<typeof setTimeout>[] = [];
  private sleeping: { timer: ReturnType<typeof setTimeout>; resolve: () => void } | null = null;
  private chain: Promise<void> = Promise.resolve();
  private done: Promise<void> | null = null;

  constructor(
    readonly device: Device,
    private readonly onEvent: (kind: string, msg: Record<string, any>) => void = () => {},
    options: SessionOptions = {},
  ) {
    this.backoff = options.backoff ?? new Backoff();
    this.tokenLifetimeS = options.tokenLifetimeS ?? 600;
    this.webSocket = options.webSocket ?? defaultWebSocket;
    this.pingIntervalS = options.pingIntervalS ?? 20;
  }

  start(): void {
    this.done ??= this.run();
  }

  get running(): boolean {
    return this.done !== null && !this.stopping && this.stoppedReason === null;
  }

  async stop(): Promise<void> {
    this.stopping = true;
    this.live = false;
    if (this.sleeping) {
      clearTimeout(this.sleeping.timer);
      this.sleeping.resolve();
    }
    this.ws?.close(1000, "bye");
    await this.done;
  }

  private async run(): Promise<void> {
    while (!this.stopping) {
      const [code, reason] = await this.connectOnce();
      this.live = false;
      this.ws = null;
      if (this.stopping) break;
      if (code !== null && FINAL_CLOSE_CODES[code]) {
        this.stoppedReason = `${code} ${FINAL_CLOSE_CODES[code]}`;
        this.onEvent("stopped", { code, reason });
        return;
      }
      let delayS = this.backoff.nextDelayS();
      const retry = /retry_after=(\d+(\.\d+)?)/.exec(reason);
      if (code === 4429 && retry) delayS = Math.max(delayS, Number(retry[1]));
      this.onEvent("reconnecting", { code, delay_s: Math.round(delayS * 100) / 100 });
      await new Promise<void>((resolve) => {
        this.sleeping = { timer: setTimeout(resolve, delayS * 1000), resolve };
      });
      this.sleeping = null;
    }
  }

  private mint(): string {
    const now = Date.now() / 1000;
    this.tokenExpS = Math.floor(now) + this.tokenLifetimeS;
    return this.device.identity.token(this.device.bookId, this.tokenLifetimeS, now);
  }

  private async connectOnce(): Promise<[number | null, string]> {
    const position = this.device.state.position;
    const url = wsUrl(this.device.serverUrl, this.device.requireBook(), position.seq, position.epoch);
    let ws: WebSocketLike;
    try {
      ws = await this.webSocket(url, this.mint());
    } catch (err) {
      return [null, String(err)];
    }
    this.ws = ws;
    this.sent = new Set();
    this.chain = Promise.resolve();
    let lastHeard = Date.now();
    return new Promise((resolve) => {
      let settled = false;
      const finish = (code: number | null, reason: string) => {
        if (settled) return;
        settled = true;
        for (const t of this.timers) clearTimeout(t);
        this.timers = [];
        this.live = false;
        resolve([code, reason]);
      };
      ws.onopen = () => {
        this.connects += 1;
        this.scheduleRefresh(ws);
        const ping = setInterval(() => {
          if (Date.now() - lastHeard > this.pingIntervalS * 2500) {
            ws.close(4000, "no answer");
            finish(null, "no answer");
          } else if (ws.readyState === 1) ws.send(JSON.stringify({ type: "ping", timestamp: Math.floor(Date.now() / 1000) }));
        }, this.pingIntervalS * 1000);
        this.timers.push(ping as unknown as ReturnType<typeof setTimeout>);
      };
      ws.onmessage = (ev) => {
        lastHeard = Date.now();
        if (typeof ev.data !== "string") return; // the server sends text only
        for (const line of ev.data.split("\n")) {
          if (!line.trim()) continue;
          this.chain = this.chain.then(() => this.handleLine(line, ws));
        }
      };
      ws.onclose = (ev) => {
        // Messages already received are handled before the session moves on.
        void this.chain.then(() => finish(ev.code, ev.reason ?? ""));
      };
      ws.onerror = () => {
        /* a close follows */
      };
    });
  }

  /** Send a fresh token (`auth`) a quarter of the lifetime before expiry, at least 1 s, at most 60 s. */
  private scheduleRefresh(ws: WebSocketLike): void {
    const margin = Math.min(60, Math.max(1, this.tokenLifetimeS / 4));
    const waitMs = Math.max(0, (this.tokenExpS - margin) * 1000 - Date.now());
    const timer = setTimeout(() => {
      if (ws.readyState !== 1 || this.ws !== ws) return;
      ws.send(JSON.stringify({ type: "auth", token: this.mint() }));
      this.tokensRefreshed += 1;
      this.scheduleRefresh(ws);
    }, waitMs);
    this.timers.push(timer);
  }

  /** Send every outbox op not yet sent on this connection (same ids after a reconnect). */
  flush(): void {
    const ws = this.ws;
    if (!this.live || !ws || ws.readyState !== 1) return;
    const device = this.device;
    if (device.oweState) {
      device.oweState = false;
      device.queueState(false);
    }
    for (const op of device.state.outbox.values()) {
      if (this.sent.has(op.id)) continue;
      this.sent.add(op.id);
      ws.send(JSON.stringify({ type: "crdt_operation", id: op.id, payload: op.payloadB64, timestamp: op.timestamp }));
    }
  }

  /** The server relays; it is not trusted to be well-formed: an unreadable message is skipped. */
  private async handleLine(line: string, ws: WebSocketLike): Promise<void> {
    let msg: unknown;
    try {
      msg = JSON.parse(line);
    } catch {
      return;
    }
    if (!msg || typeof msg !== "object" || Array.isArray(msg) || this.ws !== ws) return;
    try {
      await this.handle(msg as Record<string, any>);
    } catch (err) {
      this.onEvent("client_error", { error: String(err) });
    }
  }

  private async handle(msg: Record<string, any>): Promise<void> {
    const device = this.device;
    switch (msg.type) {
      case "welcome":
        this.backoff.reset();
        this.onlinePeers = new Set(msg.online ?? []);
        device.welcome(msg);
        break;
      case "crdt_operation":
        device.receiveOp(msg);
        break;
      case "ack":
        device.acked(String(msg.id), Number(msg.seq));
        break;
      case "sync_gap":
        if (!(await device.handleGap(msg))) this.needState = true;
        break;
      case "sync_complete":
        if (this.needState) {
          // A gap no snapshot fills: give peers everything we have and ask for theirs.
          this.needState = false;
          device.queueState(true);
        }
        this.live = true;
        this.flush();
        break;
      case "presence":
        if (msg.status === "online") this.onlinePeers.add(String(msg.device_id));
        else this.onlinePeers.delete(String(msg.device_id));
        break;
      case "error":
        if ((msg.code === "RATE_LIMIT_EXCEEDED" || msg.code === "SERVICE_UNAVAILABLE") && msg.id) {
          // Refused for now, not for good: send it again after a pause.
          const id = String(msg.id);
          this.timers.push(setTimeout(() => { this.sent.delete(id); this.flush(); }, 5000));
        } else device.refused(msg);
        break;
    }
    if (typeof msg.type === "string") this.onEvent(msg.type, msg);
  }
}
