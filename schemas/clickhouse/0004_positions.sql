-- Where the cogs projector resumes metering.events.v1: per partition, the
-- next offset whose event is neither in ClickHouse nor in the DLQ. Written
-- after the rows of a flush, so everything below a stored position is
-- durable; on start the projector positions its consumer group here.
--
-- ENGINE ReplacingMergeTree(next_offset): positions only move forward; merges
-- keep the highest, and readers take max(next_offset) per partition.
--
-- ORDER BY (topic, partition): one logical row per partition. No PARTITION BY
-- (tiny table).
CREATE TABLE IF NOT EXISTS cogs_positions
(
    topic       String,
    partition   Int32,
    next_offset UInt64,
    cluster_id  String,           -- Kafka cluster the offsets belong to
    updated_at  DateTime('UTC')
)
ENGINE = ReplacingMergeTree(next_offset)
ORDER BY (topic, partition);
