-- The unit-price catalog: one row per allowed pricing.set receipt on
-- companyos.events.v1, with the receipt's id, seq, tenant and actor as
-- provenance (the receipt itself is signed and kept by the ledger).
--
-- Which price applies to an hour of usage (view cogs_hourly): among the rows
-- of the usage's meter and unit with effective_from <= hour, region equal to
-- the usage's region or '*', and applies_to_tenant equal to the usage's
-- tenant or '' (every tenant), the most specific wins: a tenant-specific
-- price over a general one, then a region-specific price over '*', then the
-- latest effective_from, then the latest receipt (created_at, receipt_seq,
-- receipt_id). Prices are effective from whole UTC hours (the projector
-- refuses others), so an hourly bucket never straddles a price change.
--
-- ENGINE ReplacingMergeTree(): a replayed receipt collapses into its row;
-- readers group by receipt_id (prices_current) and never rely on merges.
--
-- ORDER BY (meter, unit, currency, region, applies_to_tenant, effective_from,
-- receipt_id): the catalog is read by meter; receipt_id last makes every
-- receipt its own row.
--
-- No PARTITION BY: the catalog is small (one partition).
CREATE TABLE IF NOT EXISTS prices
(
    meter             String,
    unit              String,
    currency          String,           -- ISO 4217, e.g. USD
    region            String,           -- normalised region, or '*' for every region
    applies_to_tenant String,           -- '' = every tenant
    unit_price        Decimal(38, 18),  -- price of one unit, exact
    effective_from    DateTime('UTC'),  -- whole UTC hour
    receipt_id        String,
    receipt_seq       UInt64,
    receipt_tenant    String,           -- tenant whose chain holds the receipt
    actor             String,           -- who set the price
    command_id        String,
    key_id            String,           -- keyid of the receipt's signature
    policy_version    String,
    created_at        DateTime('UTC'),  -- receipt time
    kafka_partition   Int32,
    kafka_offset      Int64,
    projected_at      DateTime('UTC')
)
ENGINE = ReplacingMergeTree()
ORDER BY (meter, unit, currency, region, applies_to_tenant, effective_from, receipt_id);
