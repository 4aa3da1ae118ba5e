-- Read views: exact at any time, whether or not parts have merged. They hold
-- no data; every FinOps query (queries/*.sql) reads them.
--
-- ClickHouse 18.16 notes: no window functions, one JOIN per SELECT (nested
-- subqueries instead), and never a Decimal column in GROUP BY (18.16 crashes
-- on Decimal128 group keys), so Decimals only appear as aggregate arguments.

-- usage_hourly_current: the current row of every bucket and partition
-- (argMax by through_offset, see 0002), summed over partitions.
CREATE VIEW IF NOT EXISTS usage_hourly_current AS
SELECT tenant, hour, service, region, team, meter, unit,
       sum(q) AS quantity, sum(e) AS events
FROM
(
    SELECT tenant, hour, service, region, team, meter, unit, src_partition,
           argMax(quantity, through_offset) AS q,
           argMax(events, through_offset) AS e
    FROM usage_hourly
    GROUP BY tenant, hour, service, region, team, meter, unit, src_partition
)
GROUP BY tenant, hour, service, region, team, meter, unit;

-- prices_current: one row per pricing.set receipt (a replay may have stored
-- it twice before a merge).
CREATE VIEW IF NOT EXISTS prices_current AS
SELECT receipt_id,
       tupleElement(r, 1) AS meter, tupleElement(r, 2) AS unit, tupleElement(r, 3) AS currency,
       tupleElement(r, 4) AS region, tupleElement(r, 5) AS applies_to_tenant,
       tupleElement(r, 6) AS unit_price, tupleElement(r, 7) AS effective_from,
       tupleElement(r, 8) AS receipt_seq, tupleElement(r, 9) AS receipt_tenant,
       tupleElement(r, 10) AS actor, tupleElement(r, 11) AS created_at
FROM
(
    SELECT receipt_id,
           any(tuple(meter, unit, currency, region, applies_to_tenant, unit_price, effective_from,
                     receipt_seq, receipt_tenant, actor, created_at)) AS r
    FROM prices
    GROUP BY receipt_id
);

-- cogs_hourly: COGS = usage × effective unit price, per hourly bucket and
-- currency. The price is resolved per bucket as documented in 0003: the
-- candidates are joined by (meter, unit), filtered, and argMax over the
-- precedence tuple (tenant-specific, region-specific, effective_from,
-- created_at, receipt_seq, receipt_id) picks the winner. Usage without any
-- applicable price has no row here (it stays in usage_hourly_current).
-- cost is Decimal(38, 27): Decimal(38, 9) quantity × Decimal(38, 18) price,
-- exact.
CREATE VIEW IF NOT EXISTS cogs_hourly AS
SELECT tenant, hour, toDate(hour) AS day, service, region, team, meter, unit, currency,
       quantity, events,
       tupleElement(best, 1) AS unit_price,
       quantity * tupleElement(best, 1) AS cost,
       tupleElement(best, 2) AS price_receipt_id
FROM
(
    SELECT tenant, hour, service, region, team, meter, unit, p_currency AS currency,
           any(u_quantity) AS quantity, any(u_events) AS events,
           argMax(tuple(p_unit_price, p_receipt_id),
                  tuple(p_applies_to_tenant != '', p_region != '*', p_effective_from,
                        p_created_at, p_receipt_seq, p_receipt_id)) AS best
    FROM
    (
        SELECT tenant, hour, service, region, team, meter, unit,
               quantity AS u_quantity, events AS u_events
        FROM usage_hourly_current
    )
    ALL INNER JOIN
    (
        SELECT meter, unit, currency AS p_currency, region AS p_region,
               applies_to_tenant AS p_applies_to_tenant, unit_price AS p_unit_price,
               effective_from AS p_effective_from, created_at AS p_created_at,
               receipt_seq AS p_receipt_seq, receipt_id AS p_receipt_id
        FROM prices_current
    ) USING (meter, unit)
    WHERE p_effective_from <= hour
      AND (p_region = region OR p_region = '*')
      AND (p_applies_to_tenant = tenant OR p_applies_to_tenant = '')
    GROUP BY tenant, hour, service, region, team, meter, unit, p_currency
);

-- cogs_daily: cost per tenant, UTC day and currency.
CREATE VIEW IF NOT EXISTS cogs_daily AS
SELECT tenant, day, currency, sum(cost) AS cost, sum(events) AS events
FROM cogs_hourly
GROUP BY tenant, day, currency;
