-- 0001: the provenance ledger (projections/ledger).
--
-- Everything here is a projection of companyos.events.v1 and can be rebuilt
-- from Kafka: drop the tables and replay. The projector writes receipts,
-- Merkle hashes, tenant heads and its Kafka positions in ONE transaction per
-- fetched batch, so the database is always a consistent prefix of the log.

-- receipts: one row per applied receipt, queryable by auditors.
-- envelope holds the exact Kafka record value (bytea, never re-encoded) so
-- the DSSE signature verifies against what is served; the other columns are
-- copies of payload fields, for filtering and listing without parsing JSON.
CREATE TABLE receipts (
    id              text        PRIMARY KEY,       -- rcpt_…; unique across tenants (derived from command_id)
    tenant          text        NOT NULL,
    seq             bigint      NOT NULL CHECK (seq >= 1),
    action          text        NOT NULL,
    actor           text        NOT NULL,
    decision        text        NOT NULL,
    policy_version  text        NOT NULL,
    evidence_hash   text        NOT NULL,
    created_at      timestamptz NOT NULL,
    -- selective-disclosure fields whose values were redacted/erased; the
    -- commitments stay in the signed payload, so the receipt still verifies.
    redactions      jsonb       NOT NULL DEFAULT '[]',
    prev_hash       text        NOT NULL,
    payload_hash    text        NOT NULL,          -- sha256:hex of the payload bytes (the next receipt's prev_hash)
    envelope        bytea       NOT NULL,
    kafka_partition int         NOT NULL,
    kafka_offset    bigint      NOT NULL,
    command_id      text        NOT NULL,
    subject         text        NOT NULL,
    -- (tenant, seq) is the chain position; its index also serves the keyset
    -- pagination of GET /v1/provenance/receipts (ORDER BY seq per tenant).
    CONSTRAINT receipts_tenant_seq UNIQUE (tenant, seq)
);

-- "Everything user:alice did in tenant T", paginated by seq. Action, time and
-- decision filters are applied while walking the (tenant, seq) index: adding
-- an index per filter would slow every insert on the hot projection path.
CREATE INDEX receipts_tenant_actor_seq ON receipts (tenant, actor, seq);

-- ledger_positions: the next Kafka offset to read per events partition,
-- committed with the rows it produced (effectively-once). cluster_id guards
-- against pointing an existing ledger at a different Kafka cluster, whose
-- offsets would mean different records.
CREATE TABLE ledger_positions (
    cluster_id  text   NOT NULL,
    topic       text   NOT NULL,
    partition   int    NOT NULL,
    next_offset bigint NOT NULL CHECK (next_offset >= 0),
    PRIMARY KEY (topic, partition)
);

-- tenant_heads: the chain head and Merkle tree size per tenant, so the chain
-- check of a new receipt needs no scan. status 'broken' stops applying the
-- tenant's receipts (gap, fork, bad signature) until an operator repairs it;
-- broken_reason says what was found where.
CREATE TABLE tenant_heads (
    tenant        text        PRIMARY KEY,
    seq           bigint      NOT NULL,
    head_hash     text        NOT NULL,
    tree_size     bigint      NOT NULL,
    status        text        NOT NULL DEFAULT 'ok' CHECK (status IN ('ok', 'broken')),
    broken_reason text,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- merkle_hashes: the per-tenant RFC 6962 tree in golang.org/x/mod/sumdb/tlog
-- "stored hash" layout (idx = tlog.StoredHashIndex(level, n)): every
-- complete subtree's hash is written once, when its last leaf arrives, and
-- never changes, so proofs for any past tree size read only committed rows.
CREATE TABLE merkle_hashes (
    tenant text   NOT NULL,
    idx    bigint NOT NULL,
    hash   bytea  NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (tenant, idx)
);

-- checkpoints: signed tree heads (golang.org/x/mod/sumdb/note). Auditors keep
-- them and ask for consistency proofs between two, proving the log was only
-- appended to. The PK orders a tenant's checkpoints by size for "latest".
CREATE TABLE checkpoints (
    tenant     text        NOT NULL,
    tree_size  bigint      NOT NULL CHECK (tree_size >= 1),
    root_hash  bytea       NOT NULL CHECK (length(root_hash) = 32),
    note       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, tree_size)
);
