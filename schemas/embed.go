// Package schemas owns CompanyOS's contract files: the policy bundle (Rego
// and data) and, as they are added, the API, receipt and database schemas.
// Files here are data, embedded into the binary; the Go code that interprets
// them lives in the owning packages (policy/, commands/, projections/...).
// This package must not import any other CompanyOS package.
package schemas

import "embed"

// Policy is the default OPA policy bundle. Its files sit under "policy/"
// (use fs.Sub(Policy, "policy") to get the bundle root). Files whose names
// start with "." or "_" are not embedded, so the bundle version lives in
// policy/VERSION rather than a .manifest.
//
//go:embed policy
var Policy embed.FS

// OpenAPI is the HTTP API contract (openapi.yaml), tested against the live
// routes.
//
//go:embed openapi.yaml
var OpenAPI []byte

// ReceiptSchema is the JSON Schema of the receipt payload.
//
//go:embed receipt.v1.schema.json
var ReceiptSchema []byte

// Postgres holds the numbered Postgres migrations ("postgres/NNNN_name.up.sql"),
// applied in order by their owner (projections/ledger.Migrate).
//
//go:embed postgres
var Postgres embed.FS
