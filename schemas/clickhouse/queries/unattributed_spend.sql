-- unattributed_spend: spend that could not be attributed, per UTC day, in
-- USD: usage whose tenant could not be determined (tenant
-- '(unattributed)': no valid subject nor record key) and usage of a known
-- tenant without a service tag (service '(unattributed)'). cost is exact
-- Decimal(38, 27); share_pct is its share of the day's total spend (Float64).
-- Columns: day, unattributed ('tenant' or 'service'), tenant, events, cost,
-- share_pct.
SELECT day, unattributed, tenant, events, cost,
       toFloat64(cost) / toFloat64(day_cost) * 100 AS share_pct
FROM
(
    SELECT day, if(tenant = '(unattributed)', 'tenant', 'service') AS unattributed, tenant,
           sum(events) AS events, sum(cost) AS cost
    FROM cogs_hourly
    WHERE currency = 'USD'
      AND (tenant = '(unattributed)' OR service = '(unattributed)')
    GROUP BY day, unattributed, tenant
)
ALL LEFT JOIN
(
    SELECT day, sum(cost) AS day_cost
    FROM cogs_daily
    WHERE currency = 'USD'
    GROUP BY day
) USING (day)
ORDER BY day, unattributed, tenant
