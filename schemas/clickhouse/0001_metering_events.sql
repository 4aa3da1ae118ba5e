-- Raw metering events: one row per accepted event of metering.events.v1,
-- written by projections/cogs. Raw tags are kept next to the normalised ones.
--
-- ENGINE ReplacingMergeTree(): rows with the same ORDER BY key collapse when
-- parts merge, so an event inserted again by a replay ends up as one row.
-- Merges run whenever they run, so nothing exact depends on them: the
-- projector inserts an event only when no other occurrence of its key is
-- stored (a look-up on this table's primary key), and readers that need
-- exactness group by the key (see projections/cogs/doc.go).
--
-- ORDER BY (tenant, hour, source, id): the event key — CloudEvents source +
-- id, scoped to the tenant — with the event's hour between tenant and the
-- id. An event is immutable, so every occurrence of it has the same hour and
-- the key is still one row per (tenant, source, id). The hour is there for
-- the projector's look-ups: a batch's keys fall into few (tenant, hour)
-- ranges of the sparse primary index (mostly the current hour), so a look-up
-- reads granules in proportion to the batch, not to the table; with the id
-- right after the tenant, random ids (UUIDs) would touch a granule each and
-- a large table would be read whole on every flush.
--
-- PARTITION BY toYYYYMM(hour): months of event time. A late event lands in
-- its own month; retention drops whole months; duplicates share a partition
-- and can collapse.
CREATE TABLE IF NOT EXISTS metering_events
(
    tenant          String,           -- attributed tenant, or '(unattributed)'
    source          String,           -- CloudEvents source
    id              String,           -- CloudEvents id
    hour            DateTime('UTC'),  -- start of the event's UTC hour
    time            DateTime('UTC'),  -- event time, whole seconds (18.16 has no DateTime64)
    time_nanos      UInt32,           -- sub-second part of the event time
    meter           String,           -- CloudEvents type, normalised
    unit            String,           -- normalised unit of the meter
    quantity        Decimal(38, 9),   -- exact
    service         String,           -- normalised tags, or '(unattributed)' for service
    region          String,
    team            String,
    tag_keys        Array(String),    -- every normalised tag, sorted by key
    tag_values      Array(String),    -- (parallel arrays: 18.16 has no Map)
    raw_subject     String,           -- as sent
    raw_unit        String,           -- as sent
    raw_tags        String,           -- the tags object as sent (JSON)
    kafka_partition Int32,            -- position of the occurrence that was projected
    kafka_offset    Int64,
    projected_at    DateTime('UTC')
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(hour)
ORDER BY (tenant, hour, source, id);
