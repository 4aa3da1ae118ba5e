-- unit_economics: cost per unit of usage, per tenant and meter, over the 30
-- days that end with the latest day holding usage, in USD. quantity and cost
-- are exact sums; cost_per_unit = cost / quantity, exact to 18 decimal
-- places (Decimal(38, 18), truncated), i.e. the blended unit price the tenant
-- paid after tenant- and region-specific prices and mid-period changes; 0
-- when the quantity is 0.
-- Columns: tenant, meter, unit, quantity, cost, cost_per_unit.
SELECT tenant, meter, unit, quantity, cost,
       if(quantity = 0, toDecimal128(0, 18), toDecimal128(cost, 18) / quantity) AS cost_per_unit
FROM
(
    SELECT tenant, meter, unit, sum(quantity) AS quantity, sum(cost) AS cost
    FROM cogs_hourly
    WHERE currency = 'USD'
      AND day > (SELECT toDate(max(hour)) FROM usage_hourly) - 30
    GROUP BY tenant, meter, unit
)
ORDER BY tenant, meter, unit
