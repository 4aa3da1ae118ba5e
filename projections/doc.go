// Package projections holds the read models, one sub-package each (graph/,
// ledger/, cogs/). A projection consumes companyos.events.v1 (or
// metering.events.v1), never writes to the log, and can always be thrown away
// and rebuilt from it.
package projections
