-- cost_per_tenant_day: COGS per tenant and UTC day, in the reporting
-- currency (USD), exact: cost is Decimal(38, 27) = hourly usage × the unit
-- price effective for that hour (view cogs_hourly, schemas/clickhouse/0005).
-- Columns: tenant, day, cost. Usage whose tenant could not be attributed is
-- reported as tenant '(unattributed)'. Usage without an applicable price is
-- not costed (see usage_hourly_current).
-- Run: clickhouse-client --database companyos < cost_per_tenant_day.sql
SELECT tenant, day, sum(cost) AS cost
FROM cogs_hourly
WHERE currency = 'USD'
GROUP BY tenant, day
ORDER BY tenant, day
