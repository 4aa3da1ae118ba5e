// Package audit owns the auditor's evidence bundle: its format
// (schemas/bundle.v1.md), the export of one tenant's receipts from the
// provenance ledger into a deterministic tar.gz, and the offline verification
// of such a bundle.
//
// Verification must not need a network, Kafka or Postgres: Verify reads only
// the bundle (and optionally pinned keys) and checks every DSSE signature, the
// seq and prev_hash chain, the Merkle tree against the signed checkpoints,
// checkpoint consistency, disclosures and evidence. Export reads the ledger
// through projections/ledger and never writes to it, except that it asks the
// ledger to sign a checkpoint when none covers the exported range.
//
// The package must not know about commands, policy or Kafka.
package audit
