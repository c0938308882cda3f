/** The Home Pocket relay client: see README.md and docs/CONTRACT.md of the repository. */
export { Api, RelayError, PREFIX } from "./api.js";
export type { ApiOptions, ExchangeAnswer, Json, OpRecord, OpsPage, PhotoTicket, SnapshotTicket, Ticket } from "./api.js";
export { b64, b64url, concat, hex, randomBytes, randomId, unb64, unhex, utf8, uuid4 } from "./bytes.js";
export { Device } from "./device.js";
export type { DeviceOptions, EventSink } from "./device.js";
export { DEFAULT_TOKEN_LIFETIME_S, Identity, deviceIdOf } from "./identity.js";
export { KIND_STATE_REQUEST, KIND_UPDATE, Ledger, decodeOp, encodeOp } from "./ledger.js";
export type { Entry } from "./ledger.js";
export { POLL_MS, invite, runGenerator, runJoiner } from "./pairing.js";
export type { CompareSas, Invitation, Paired } from "./pairing.js";
export * as sas from "./sas.js";
export { PairingAbort } from "./sas.js";
export { DecryptError, OVERHEAD, newBookKey, opAad, openSealed, photoAad, seal, snapshotAad } from "./seal.js";
export { Backoff, FINAL_CLOSE_CODES, RelaySession, defaultWebSocket, subprotocolWebSocket, wsUrl } from "./session.js";
export type { SessionOptions, WebSocketFactory, WebSocketLike } from "./session.js";
export { DeviceState, MemoryStore, Position } from "./state.js";
export type { PendingOp, StateJson, StateStore } from "./state.js";
