-- Metadata only. Books and devices are known by hashes; sync records hold counts
-- and times; nothing here can decrypt, or even name, a family's book.

CREATE TABLE books (
    book_ref    TEXT PRIMARY KEY,          -- HMAC-SHA256(ID_HASH_KEY, book_id), hex
    created_at  BIGINT NOT NULL            -- Unix seconds
);

CREATE TABLE devices (
    device_id       TEXT PRIMARY KEY,      -- first 16 bytes of SHA-256(public key), hex
    public_key      TEXT NOT NULL UNIQUE,  -- Ed25519 public key, base64
    book_ref        TEXT,                  -- NULL: in no book
    role            TEXT,                  -- 'member', 'pending' (pairing) or NULL
    created_at      BIGINT NOT NULL,
    last_active_at  BIGINT NOT NULL,
    revoked_at      BIGINT                 -- set once; a revoked key never registers again
);
CREATE INDEX devices_book_ref ON devices (book_ref);

CREATE TABLE sync_records (
    book_ref      TEXT PRIMARY KEY,
    ops_total     BIGINT NOT NULL DEFAULT 0,
    bytes_total   BIGINT NOT NULL DEFAULT 0,
    last_op_at    BIGINT
);

CREATE TABLE photos (
    photo_id      TEXT PRIMARY KEY,        -- random, made by the server
    book_ref      TEXT NOT NULL,
    size_bytes    BIGINT NOT NULL,         -- declared, then checked at complete
    status        TEXT NOT NULL,           -- 'pending' or 'complete'
    created_at    BIGINT NOT NULL,
    completed_at  BIGINT
);
CREATE INDEX photos_book_ref ON photos (book_ref);
CREATE INDEX photos_pending ON photos (status, created_at);

CREATE TABLE audit_events (
    id          {{serial_pk}},
    event_type  TEXT NOT NULL,
    action      TEXT NOT NULL,
    result      TEXT NOT NULL,
    device_id   TEXT,
    book_ref    TEXT,
    ip_ref      TEXT,                      -- HMAC of the /24 or /48, never the address
    user_agent  TEXT,
    created_at  BIGINT NOT NULL,
    request_id  TEXT
);
CREATE INDEX audit_events_device ON audit_events (device_id, id);
CREATE INDEX audit_events_created ON audit_events (created_at);
CREATE INDEX audit_events_book ON audit_events (book_ref);
