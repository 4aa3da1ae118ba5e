-- 0004: evidence blobs the ledger must erase (projections/ledger).
--
-- A purge manifest lists the evidence blobs of the erased subject. The ledger
-- projector records them here in the same transaction as the manifest
-- receipt, then deletes them from the evidence store (evidence/) and removes
-- the rows; whatever a crash interrupts is swept again at the next start, so
-- an applied manifest always ends with its blobs gone.
CREATE TABLE evidence_erasures (
    hash       text        NOT NULL,           -- sha256:<hex>, as in receipts.evidence_hash
    tenant     text        NOT NULL,
    receipt_id text        NOT NULL,           -- the purge manifest
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (hash, receipt_id)
);
