-- Object deletions still to do: ones the blob store refused, and the second pass over an
-- erased book's folder after its last upload URL has expired. The sweeper retries them.
-- `target` is an object key, or a folder prefix ending in '/' whose objects no photo row
-- names any more. Keys hold book_ref, never a raw book_id.

CREATE TABLE blob_deletions (
    id          {{serial_pk}},
    target      TEXT NOT NULL,
    not_before  BIGINT NOT NULL,           -- Unix seconds: not tried before this
    attempts    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX blob_deletions_due ON blob_deletions (not_before);
