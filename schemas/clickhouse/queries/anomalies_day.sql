-- anomalies_day: tenant-days whose COGS (USD) lies outside ±3σ of the same
-- tenant's trailing 14-day baseline (the 14 days before it; sample standard
-- deviation). Days without cost count as 0 (a tenant going silent is an
-- anomaly too): every tenant gets a dense calendar from its first day with
-- cost to the latest day holding usage. A day is judged only once it has a
-- full 14-day history and is over (day < today in UTC). The
-- '(unattributed)' bucket is not a tenant and is not judged.
-- 18.16 has no window functions: the baseline is a self-join, each day
-- contributing to the 14 days after it through arrayJoin(arrayMap(x -> x + 1, range(14))).
-- cost is exact Decimal(38, 27); the statistics are Float64.
-- Columns: tenant, day, cost, baseline_mean, baseline_stddev, zscore,
-- direction ('spike' or 'drop').
SELECT tenant, day, cost, baseline_mean, baseline_stddev,
       (c - baseline_mean) / baseline_stddev AS zscore,
       if(c > baseline_mean, 'spike', 'drop') AS direction
FROM
(
    SELECT tenant, d AS day, c, cost
    FROM
    (
        SELECT tenant, d, toFloat64(cost) AS c, cost
        FROM
        (
            SELECT tenant, arrayJoin(arrayMap(i -> first_day + i, range(toUInt32(last_day - first_day + 1)))) AS d
            FROM
            (
                SELECT tenant, min(day) AS first_day, (SELECT toDate(max(hour)) FROM usage_hourly) AS last_day
                FROM cogs_daily
                WHERE currency = 'USD' AND tenant != '(unattributed)'
                GROUP BY tenant
            )
        )
        ALL LEFT JOIN
        (
            SELECT tenant, day AS d, cost
            FROM cogs_daily
            WHERE currency = 'USD' AND tenant != '(unattributed)'
        ) USING (tenant, d)
    )
)
ALL INNER JOIN
(
    SELECT tenant, d + k AS day, count() AS n, avg(c) AS baseline_mean, stddevSamp(c) AS baseline_stddev
    FROM
    (
        SELECT tenant, d, toFloat64(cost) AS c, arrayJoin(arrayMap(x -> x + 1, range(14))) AS k
        FROM
        (
            SELECT tenant, arrayJoin(arrayMap(i -> first_day + i, range(toUInt32(last_day - first_day + 1)))) AS d
            FROM
            (
                SELECT tenant, min(day) AS first_day, (SELECT toDate(max(hour)) FROM usage_hourly) AS last_day
                FROM cogs_daily
                WHERE currency = 'USD' AND tenant != '(unattributed)'
                GROUP BY tenant
            )
        )
        ALL LEFT JOIN
        (
            SELECT tenant, day AS d, cost
            FROM cogs_daily
            WHERE currency = 'USD' AND tenant != '(unattributed)'
        ) USING (tenant, d)
    )
    GROUP BY tenant, day
    HAVING n = 14
) USING (tenant, day)
WHERE day < toDate(now(), 'UTC')
  AND abs(c - baseline_mean) > 3 * baseline_stddev
ORDER BY day, tenant
