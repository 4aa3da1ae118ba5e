-- cost_per_tenant_service_day: COGS per tenant, service and UTC day in USD,
-- exact Decimal(38, 27). Usage without a service tag (after normalisation,
-- schemas/clickhouse/tag_rules.yaml) is service '(unattributed)'.
-- Columns: tenant, service, day, cost.
SELECT tenant, service, day, sum(cost) AS cost
FROM cogs_hourly
WHERE currency = 'USD'
GROUP BY tenant, service, day
ORDER BY tenant, service, day
