-- 0002: the content-addressed evidence store (package evidence).
--
-- Evidence is the exact bytes a receipt's evidence_hash commits to (today the
-- command JSON). A blob is keyed by its SHA-256 — the 32 raw digest bytes
-- here; "sha256:<hex>" (events.EvidenceHash) is only the text form used by
-- the API — so storing the same bytes twice is a no-op, and every read
-- re-hashes what it returns.
--
-- A blob lives in one of two places:
--   * loose  (evidence_loose): one row per blob, the blob's own zstd frame.
--     The ledger projector writes here, inside its own transaction, at the
--     receipt rate; the table is kept narrow and holds only blobs that were
--     not compacted yet, so its primary key stays small and hot in cache.
--   * packed (evidence_packed → evidence_packs): the compaction job moves
--     small loose blobs into packs, each ONE zstd stream over the
--     concatenated raw blobs, which compresses similar JSON far better than
--     per-blob frames. evidence_packed maps a hash to its byte range in the
--     uncompressed pack.
--
-- Data columns use STORAGE EXTERNAL: the bytes are already zstd, so letting
-- TOAST try pglz on them again only burns CPU on the write path.

-- evidence_packs: one row per pack. generation increases whenever the pack is
-- rewritten (Delete overwrites an erased blob's range with zeros), and
-- readers key their cache of decompressed packs by (pack_id, generation).
-- int, not bigint, ids: 2^31 packs of 4 MiB is far beyond one database, and
-- a 4-byte id keeps the evidence_packed row at 72 bytes instead of 80.
CREATE TABLE evidence_packs (
    pack_id     int         GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    generation  int         NOT NULL DEFAULT 1,
    blob_count  int         NOT NULL CHECK (blob_count >= 1),    -- live (not deleted) blobs
    raw_size    bigint      NOT NULL CHECK (raw_size >= 0),      -- length of the uncompressed pack
    stored_size bigint      NOT NULL CHECK (stored_size >= 0),   -- length(data)
    data        bytea       NOT NULL,                            -- one zstd frame
    created_at  timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE evidence_packs ALTER COLUMN data SET STORAGE EXTERNAL;

-- evidence_loose: blobs not (yet) packed. A hash is normally in exactly one of
-- evidence_loose and evidence_packed. A Put racing a compaction of the same
-- hash can leave a transient second, identical copy here; the next
-- compaction drops it, and readers accept either copy (both hash-verified).
CREATE TABLE evidence_loose (
    hash        bytea       PRIMARY KEY CHECK (length(hash) = 32),
    raw_size    int         NOT NULL CHECK (raw_size >= 0),
    stored_size int         NOT NULL CHECK (stored_size >= 0),   -- length(data)
    data        bytea       NOT NULL,                            -- zstd frame of the raw bytes
    created_at  timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE evidence_loose ALTER COLUMN data SET STORAGE EXTERNAL;

-- evidence_packed: the pack index, one narrow row per packed blob (for small
-- blobs this row and its PK entry, not the compressed bytes, are most of the
-- on-disk size). raw_size is also the length of the blob's range
-- [pack_offset, pack_offset + raw_size) in the uncompressed pack. Offsets
-- never change (Delete zeroes a range instead of splicing it out), so
-- nothing looks rows up by pack and there is no index on pack_id. No FK to
-- evidence_packs either: the compactor and Delete keep the two consistent in
-- one transaction, and a per-row FK check would slow packing.
CREATE TABLE evidence_packed (
    hash        bytea PRIMARY KEY CHECK (length(hash) = 32),
    pack_id     int   NOT NULL,
    pack_offset int   NOT NULL CHECK (pack_offset >= 0),
    raw_size    int   NOT NULL CHECK (raw_size >= 0)
);
