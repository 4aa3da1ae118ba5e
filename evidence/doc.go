// Package evidence owns the content-addressed evidence store: the bytes a
// receipt's evidence_hash commits to (today the command JSON), kept in
// Postgres and addressed by "sha256:<hex>" of those bytes, exactly as
// events.EvidenceHash computes it.
//
// It owns the tables of schemas/postgres/0002_evidence.up.sql —
// evidence_loose, evidence_packed and evidence_packs — and the compaction job
// that moves small loose blobs into zstd packs. Writes are idempotent (a
// blob that is already stored is not stored again) and every read re-hashes
// what it returns, so a damaged row surfaces as ErrCorrupt, never as wrong
// evidence.
//
// It must not touch any other table (receipts, heads and checkpoints belong
// to projections/ledger), decide which bytes are evidence for a receipt, or
// run migrations (projections/ledger.Migrate applies every schemas/postgres
// file). It reads no flags or environment: callers pass a pool and options.
package evidence
