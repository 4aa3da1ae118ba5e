-- Hourly usage per tenant, service, region, team and meter: the materialised
-- input of every COGS query, maintained by projections/cogs.
--
-- Why not a materialized view over metering_events: a view sees every
-- inserted block, including a replayed one, and an insert into the source
-- table can succeed while the push into the view fails; a SummingMergeTree
-- behind it would then double count or lose usage. Instead the projector
-- owns this table and writes it idempotently:
--
-- * Every row covers one Kafka partition (src_partition) of one bucket and
--   states how far into that partition it is complete: through_offset is the
--   next offset not yet counted. Within a partition the projector reads in
--   offset order, so "every accepted event of partition p below
--   through_offset that falls into this bucket" is an exact description of
--   what quantity and events include.
-- * A flush reads the current row of each bucket it touches, adds only the
--   accepted events at or above through_offset, and writes a new row with
--   through_offset = the end of the flushed range. A replay of offsets already
--   counted adds nothing, whatever the batch boundaries are, so a crash at any
--   point (before or after this insert, before the positions are stored) can
--   never double count. Duplicate events (same tenant, source and id at
--   another offset) are dropped before this step (see metering_events).
--
-- ENGINE ReplacingMergeTree(through_offset): of the rows of one bucket and
-- partition, merges keep the one with the highest through_offset, i.e. the
-- most complete. Readers do not wait for merges: usage_hourly_current picks
-- argMax(…, through_offset) per key, which is exact at any time.
--
-- ORDER BY (tenant, hour, service, region, team, meter, unit, src_partition):
-- the bucket key. tenant and hour first: the projector reads touched
-- (tenant, hour) pairs and reports scan tenants over time ranges.
--
-- PARTITION BY toYYYYMM(hour): one partition per month, as metering_events.
CREATE TABLE IF NOT EXISTS usage_hourly
(
    tenant         String,
    hour           DateTime('UTC'),  -- start of the UTC hour
    service        String,
    region         String,
    team           String,
    meter          String,
    unit           String,
    src_partition  Int32,            -- metering.events.v1 partition the events came from
    quantity       Decimal(38, 9),   -- exact sum of the accepted events' quantities
    events         UInt64,           -- accepted events counted
    through_offset UInt64            -- next offset of src_partition not yet counted (the row's version)
)
ENGINE = ReplacingMergeTree(through_offset)
PARTITION BY toYYYYMM(hour)
ORDER BY (tenant, hour, service, region, team, meter, unit, src_partition);
