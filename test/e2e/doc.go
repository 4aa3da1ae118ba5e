// Package e2e holds end-to-end tests of the real companyos binary: it is
// built once, run as a subprocess against fresh Postgres and ClickHouse
// databases, killed and restarted, and its Kafka log is read back with
// independent clients (franz-go, kcat, a standard-library verifier).
//
// It has no non-test code; it must not be imported.
package e2e
