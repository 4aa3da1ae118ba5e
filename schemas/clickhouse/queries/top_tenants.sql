-- top_tenants: the 10 tenants with the highest COGS over the 30 days that
-- end with the latest day holding usage (anchored to the data rather than to
-- now(), so a replayed or historical dataset reports the same), in USD,
-- exact Decimal(38, 27). The '(unattributed)' bucket is not a tenant and is
-- not ranked (see unattributed_spend.sql). Ties are broken by tenant name.
-- Columns: tenant, cost, events, first_day, last_day.
SELECT tenant, sum(cost) AS cost, sum(events) AS events, min(day) AS first_day, max(day) AS last_day
FROM cogs_daily
WHERE currency = 'USD'
  AND tenant != '(unattributed)'
  AND day > (SELECT toDate(max(hour)) FROM usage_hourly) - 30
GROUP BY tenant
ORDER BY cost DESC, tenant
LIMIT 10
