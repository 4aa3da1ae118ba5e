// Package ledger owns the provenance ledger: the Postgres projection of
// companyos.events.v1 (receipts, per-tenant chain heads and RFC 6962 Merkle
// trees, signed checkpoints, Kafka positions), the proofs served from it and
// the HTTP API under /v1/provenance.
//
// It reads the log and writes only its own tables (schemas/postgres). It must
// not produce to Kafka, decide commands (commands/) or touch other read
// models; the log stays the truth, and every table here can be rebuilt by
// replaying it.
package ledger
