-- Encrypted full-state snapshots of a book, made by its clients. The bytes live in the
-- blob store under snapshots/{book_ref}/{snapshot_id}; a row holds only what the server
-- needs to pick the latest, keep the quota and trim the backlog. Never a raw book_id.

CREATE TABLE snapshots (
    snapshot_id   TEXT PRIMARY KEY,        -- random, made by the server
    book_ref      TEXT NOT NULL,           -- HMAC-SHA256(ID_HASH_KEY, book_id), hex
    epoch         TEXT NOT NULL,           -- the backlog's epoch it was made in
    covers_seq    BIGINT NOT NULL,         -- it holds every op through this seq
    size_bytes    BIGINT NOT NULL,         -- declared, then checked at complete
    status        TEXT NOT NULL,           -- 'pending' or 'complete'
    created_at    BIGINT NOT NULL,         -- Unix seconds
    completed_at  BIGINT
);
CREATE INDEX snapshots_book_ref ON snapshots (book_ref, status);
CREATE INDEX snapshots_pending ON snapshots (status, created_at);
