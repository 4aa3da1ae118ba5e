-- 0003: per-subject data keys for selective disclosure (internal/keystore).
--
-- Selective values (e.g. an employee's email) never enter a signed receipt;
-- they travel next to it encrypted under their subject's data key. Erasing a
-- subject destroys its key (crypto-shredding): the ciphertexts in Kafka and
-- in `disclosures` become unreadable while every receipt still verifies.
--
-- Keys are stored wrapped (AES-256-GCM) under the keystore's key-encryption
-- key, which lives outside the database (a key file), so a database dump
-- alone reveals no value.
CREATE TABLE subject_keys (
    key_id       bigserial   PRIMARY KEY,
    tenant       text        NOT NULL,
    subject      text        NOT NULL,
    wrapped_key  bytea,                      -- NULL once shredded
    created_at   timestamptz NOT NULL DEFAULT now(),
    shredded_at  timestamptz,
    shredded_by  text,                       -- the receipt (purge manifest) that erased it
    CHECK ((wrapped_key IS NULL) = (shredded_at IS NOT NULL))
);

-- At most one live key per subject; a subject erased and later re-created
-- gets a fresh key (and so a fresh key_id), old values stay unreadable.
CREATE UNIQUE INDEX subject_keys_live ON subject_keys (tenant, subject) WHERE shredded_at IS NULL;

-- disclosures: the sealed selective values of each receipt, projected from
-- the companyos-disclosures header of its Kafka record by the ledger
-- projector (same transaction as the receipt).
CREATE TABLE disclosures (
    receipt_id text   NOT NULL,
    field      text   NOT NULL,
    tenant     text   NOT NULL,
    subject    text   NOT NULL,
    key_id     bigint NOT NULL,
    nonce      bytea  NOT NULL,
    ciphertext bytea  NOT NULL,
    PRIMARY KEY (receipt_id, field)
);
CREATE INDEX disclosures_subject ON disclosures (tenant, subject);
