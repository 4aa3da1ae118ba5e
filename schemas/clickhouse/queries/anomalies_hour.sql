-- anomalies_hour: tenant-hours whose COGS (USD) lies outside ±3σ of the same
-- tenant's trailing 14×24-hour baseline (the 336 hours before it; sample
-- standard deviation). Hours without cost count as 0 (dense calendar per
-- tenant). Only the last 7 days before the latest hour holding usage are
-- judged, and only hours that are over (before the current UTC hour) with a
-- full 336-hour history, so the query reads at most 21 days. The
-- '(unattributed)' bucket is not judged.
-- 18.16 has no window functions: the baseline is a self-join, each hour
-- contributing to the 336 hours after it through arrayJoin.
-- cost is exact Decimal(38, 27); the statistics are Float64.
-- Columns: tenant, hour, cost, baseline_mean, baseline_stddev, zscore,
-- direction ('spike' or 'drop').
SELECT tenant, hour, cost, baseline_mean, baseline_stddev,
       (c - baseline_mean) / baseline_stddev AS zscore,
       if(c > baseline_mean, 'spike', 'drop') AS direction
FROM
(
    SELECT tenant, h AS hour, c, cost
    FROM
    (
        SELECT tenant, h, toFloat64(cost) AS c, cost
        FROM
        (
            SELECT tenant, arrayJoin(arrayMap(i -> toDateTime(first_hour + i * 3600, 'UTC'),
                                              range(toUInt32(intDiv(last_hour - first_hour, 3600) + 1)))) AS h
            FROM
            (
                SELECT tenant, greatest(min(hour), (SELECT max(hour) FROM usage_hourly) - 21 * 86400) AS first_hour,
                       (SELECT max(hour) FROM usage_hourly) AS last_hour
                FROM usage_hourly
                WHERE tenant != '(unattributed)'
                GROUP BY tenant
            )
        )
        ALL LEFT JOIN
        (
            SELECT tenant, hour AS h, sum(cost) AS cost
            FROM cogs_hourly
            WHERE currency = 'USD' AND tenant != '(unattributed)'
              AND hour >= (SELECT max(hour) FROM usage_hourly) - 21 * 86400
            GROUP BY tenant, h
        ) USING (tenant, h)
    )
)
ALL INNER JOIN
(
    SELECT tenant, toDateTime(h + k * 3600, 'UTC') AS hour, count() AS n,
           avg(c) AS baseline_mean, stddevSamp(c) AS baseline_stddev
    FROM
    (
        SELECT tenant, h, toFloat64(cost) AS c, arrayJoin(arrayMap(x -> x + 1, range(336))) AS k
        FROM
        (
            SELECT tenant, arrayJoin(arrayMap(i -> toDateTime(first_hour + i * 3600, 'UTC'),
                                              range(toUInt32(intDiv(last_hour - first_hour, 3600) + 1)))) AS h
            FROM
            (
                SELECT tenant, greatest(min(hour), (SELECT max(hour) FROM usage_hourly) - 21 * 86400) AS first_hour,
                       (SELECT max(hour) FROM usage_hourly) AS last_hour
                FROM usage_hourly
                WHERE tenant != '(unattributed)'
                GROUP BY tenant
            )
        )
        ALL LEFT JOIN
        (
            SELECT tenant, hour AS h, sum(cost) AS cost
            FROM cogs_hourly
            WHERE currency = 'USD' AND tenant != '(unattributed)'
              AND hour >= (SELECT max(hour) FROM usage_hourly) - 21 * 86400
            GROUP BY tenant, h
        ) USING (tenant, h)
    )
    GROUP BY tenant, hour
    HAVING n = 336
) USING (tenant, hour)
WHERE hour < toStartOfHour(now())
  AND hour > (SELECT max(hour) FROM usage_hourly) - 7 * 86400
  AND abs(c - baseline_mean) > 3 * baseline_stddev
ORDER BY hour, tenant
