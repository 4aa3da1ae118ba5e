-- day_over_day: each tenant's daily COGS next to the previous day's, in USD.
-- cost, prev_cost and delta are exact Decimal(38, 27); prev_cost is 0 when
-- the tenant had no cost the day before; pct_change is Float64 and NULL when
-- prev_cost is 0. (No window functions on 18.16: a self-join on day - 1.)
-- Columns: tenant, day, cost, prev_cost, delta, pct_change.
SELECT tenant, day, cost, prev_cost, cost - prev_cost AS delta,
       if(prev_cost = 0, NULL, (toFloat64(cost) - toFloat64(prev_cost)) / toFloat64(prev_cost) * 100) AS pct_change
FROM
(
    SELECT tenant, day, cost
    FROM cogs_daily
    WHERE currency = 'USD'
)
ALL LEFT JOIN
(
    SELECT tenant, d + 1 AS day, prev_cost
    FROM
    (
        SELECT tenant, day AS d, cost AS prev_cost
        FROM cogs_daily
        WHERE currency = 'USD'
    )
) USING (tenant, day)
ORDER BY tenant, day
