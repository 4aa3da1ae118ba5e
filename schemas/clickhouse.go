package schemas

import "embed"

// ClickHouse holds the ClickHouse schema of metering, the price catalog and
// COGS under "clickhouse/": numbered DDL ("clickhouse/NNNN_name.sql", applied
// in order by projections/cogs.Migrate), the tag normalisation rules
// ("clickhouse/tag_rules.yaml") and the FinOps queries
// ("clickhouse/queries/*.sql", one statement each). Everything must run on
// ClickHouse 18.16 and current releases.
//
//go:embed clickhouse
var ClickHouse embed.FS
