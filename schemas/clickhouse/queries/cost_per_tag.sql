-- cost_per_tag: COGS per UTC day and normalised cost-allocation tag
-- (service, region, team), in USD, exact Decimal(38, 27). Each tag key
-- partitions the day's whole cost, so the rows of one day and tag_key sum to
-- the day's total. Missing tags carry their default from tag_rules.yaml
-- (region 'global', team 'unowned'); a missing service is '(unattributed)'.
-- Columns: day, tag_key, tag_value, cost.
SELECT day, tag.1 AS tag_key, tag.2 AS tag_value, sum(cost) AS cost
FROM
(
    SELECT day, cost,
           arrayJoin([('service', service), ('region', region), ('team', team)]) AS tag
    FROM cogs_hourly
    WHERE currency = 'USD'
)
GROUP BY day, tag_key, tag_value
ORDER BY day, tag_key, tag_value
