// Package graph owns the in-memory company graph: the per-tenant read model
// of the entity and relation changes carried by allowed receipts
// (DESIGN.md decision 7). It holds:
//
//   - Graph: one tenant's nodes and typed edges in compact adjacency lists,
//     both directions, fed by ApplyChange;
//   - Tenants: the registry of graphs with the receipt seq each has applied,
//     so that replaying the log is a no-op and a gap is an error;
//   - snapshots (WriteSnapshot/ReadSnapshot) with the Kafka offsets they
//     correspond to, for a fast restart;
//   - the graph query language (Parse, ParseJSON; grammar in
//     schemas/graph-query.ebnf) and its executor (Execute) with depth,
//     fanout, result and time limits and cursor pagination;
//   - who_can and PrincipalRoles: which principals the policy would allow,
//     with the relations that give them their roles.
//
// This package is pure logic. It does not consume Kafka, serve HTTP, own
// metrics or decide policy: the projector feeds it changes, the API maps its
// typed errors (*ParseError, *LimitError, ErrInvalidCursor) to responses, and
// who_can asks an Authorizer (the policy engine) for every decision.
//
// Concurrency: a Graph has one writer (the projector goroutine that owns the
// tenant's partition) and any number of concurrent readers. Writers take the
// Graph's write lock per change; queries take the read lock for the duration
// of a walk. Attribute maps are replaced, never mutated, so views returned by
// queries stay valid after the lock is released; callers must treat them as
// read-only.
package graph
