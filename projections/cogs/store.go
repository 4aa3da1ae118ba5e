package cogs

import (
	"context"
	"fmt"
	"math/big"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/ext"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// store is the projector's ClickHouse I/O. Sets (event keys, touched
// buckets) travel as external tables of the native protocol, so a batch of
// any size never hits max_query_size.
type store struct {
	conn driver.Conn
}

// storedOccurrences returns, for each key stored in metering_events, the
// positions it was projected from (one, unless two projectors raced).
func (s *store) storedOccurrences(ctx context.Context, keys []eventKey) (map[eventKey][]position, error) {
	out := map[eventKey][]position{}
	if len(keys) == 0 {
		return out, nil
	}
	tbl, err := ext.NewTable("batch_keys", ext.Column("tenant", "String"), ext.Column("hour", "DateTime('UTC')"),
		ext.Column("source", "String"), ext.Column("id", "String"))
	if err != nil {
		return nil, err
	}
	for _, k := range keys {
		if err := tbl.Append(k.tenant, time.Unix(k.hour, 0).UTC(), k.source, k.id); err != nil {
			return nil, fmt.Errorf("cogs: key table: %w", err)
		}
	}
	rows, err := s.conn.Query(clickhouse.Context(ctx, clickhouse.WithExternalTable(tbl)),
		`SELECT tenant, hour, source, id, kafka_partition, kafka_offset FROM metering_events
		 WHERE (tenant, hour, source, id) IN (SELECT tenant, hour, source, id FROM batch_keys)`)
	if err != nil {
		return nil, fmt.Errorf("cogs: look up event keys: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var k eventKey
		var hour time.Time
		var p position
		if err := rows.Scan(&k.tenant, &hour, &k.source, &k.id, &p.partition, &p.offset); err != nil {
			return nil, fmt.Errorf("cogs: look up event keys: %w", err)
		}
		k.hour = hour.Unix()
		out[k] = append(out[k], p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("cogs: look up event keys: %w", err)
	}
	return out, nil
}

func (s *store) insertEvents(ctx context.Context, rs []*eventRow) error {
	if len(rs) == 0 {
		return nil
	}
	b, err := s.conn.PrepareBatch(ctx, `INSERT INTO metering_events (tenant, source, id, hour, time, time_nanos, meter, unit,
		quantity, service, region, team, tag_keys, tag_values, raw_subject, raw_unit, raw_tags, kafka_partition, kafka_offset, projected_at)`)
	if err != nil {
		return fmt.Errorf("cogs: insert events: %w", err)
	}
	defer b.Abort() //nolint:errcheck // no-op after Send
	// Row by row: measured against batch.Column(i).Append of typed slices,
	// this costs less CPU (the driver appends arrays by reflection either
	// way, and the column slices are extra copies).
	now := time.Now().UTC().Truncate(time.Second)
	for _, r := range rs {
		if err := b.Append(r.key.tenant, r.key.source, r.key.id, r.hour, r.time, r.nanos, r.meter, r.unit,
			formatFixed(r.quantity, QuantityScale), r.tags.Service, r.tags.Region, r.tags.Team, r.tags.Keys, r.tags.Values,
			r.rawSubject, r.rawUnit, r.rawTags, r.pos.partition, r.pos.offset, now); err != nil {
			return fmt.Errorf("cogs: insert events: %w", err)
		}
	}
	if err := b.Send(); err != nil {
		return fmt.Errorf("cogs: insert events: %w", err)
	}
	return nil
}

// bucketKey is one row of usage_hourly: an hourly bucket and the partition
// its events came from.
type bucketKey struct {
	tenant    string
	hour      int64 // Unix seconds of the UTC hour
	service   string
	region    string
	team      string
	meter     string
	unit      string
	partition int32
}

// bucketState is what a bucket row holds: its quantity (scaled by
// 10^QuantityScale), event count, and the next offset not yet counted.
type bucketState struct {
	quantity *big.Int
	events   uint64
	through  int64
}

// buckets reads the current state of the given buckets (absent ones are
// new). It reads every bucket of the touched (tenant, hour) pairs and keeps
// the asked ones.
func (s *store) buckets(ctx context.Context, keys map[bucketKey]bool) (map[bucketKey]bucketState, error) {
	out := map[bucketKey]bucketState{}
	if len(keys) == 0 {
		return out, nil
	}
	type th struct {
		tenant string
		hour   int64
	}
	pairs := map[th]bool{}
	for k := range keys {
		pairs[th{k.tenant, k.hour}] = true
	}
	tbl, err := ext.NewTable("touched", ext.Column("tenant", "String"), ext.Column("hour", "DateTime('UTC')"))
	if err != nil {
		return nil, err
	}
	for p := range pairs {
		if err := tbl.Append(p.tenant, time.Unix(p.hour, 0).UTC()); err != nil {
			return nil, fmt.Errorf("cogs: bucket table: %w", err)
		}
	}
	rows, err := s.conn.Query(clickhouse.Context(ctx, clickhouse.WithExternalTable(tbl)),
		`SELECT tenant, hour, service, region, team, meter, unit, src_partition,
		        argMax(quantity, through_offset), argMax(events, through_offset), max(through_offset)
		 FROM usage_hourly
		 WHERE (tenant, hour) IN (SELECT tenant, hour FROM touched)
		 GROUP BY tenant, hour, service, region, team, meter, unit, src_partition`)
	if err != nil {
		return nil, fmt.Errorf("cogs: read hourly buckets: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var k bucketKey
		var hour time.Time
		var q Decimal
		var st bucketState
		var through uint64
		if err := rows.Scan(&k.tenant, &hour, &k.service, &k.region, &k.team, &k.meter, &k.unit, &k.partition, &q, &st.events, &through); err != nil {
			return nil, fmt.Errorf("cogs: read hourly buckets: %w", err)
		}
		k.hour = hour.Unix()
		if !keys[k] {
			continue
		}
		if st.quantity, err = toFixed(q, QuantityScale); err != nil {
			return nil, fmt.Errorf("cogs: read hourly buckets: %w", err)
		}
		st.through = int64(through)
		out[k] = st
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("cogs: read hourly buckets: %w", err)
	}
	return out, nil
}

func (s *store) insertBuckets(ctx context.Context, states map[bucketKey]bucketState) error {
	if len(states) == 0 {
		return nil
	}
	b, err := s.conn.PrepareBatch(ctx, `INSERT INTO usage_hourly (tenant, hour, service, region, team, meter, unit,
		src_partition, quantity, events, through_offset)`)
	if err != nil {
		return fmt.Errorf("cogs: insert hourly usage: %w", err)
	}
	defer b.Abort() //nolint:errcheck // no-op after Send
	for k, st := range states {
		if err := b.Append(k.tenant, time.Unix(k.hour, 0).UTC(), k.service, k.region, k.team, k.meter, k.unit,
			k.partition, formatFixed(st.quantity, QuantityScale), st.events, uint64(st.through)); err != nil {
			return fmt.Errorf("cogs: insert hourly usage: %w", err)
		}
	}
	if err := b.Send(); err != nil {
		return fmt.Errorf("cogs: insert hourly usage: %w", err)
	}
	return nil
}

// topicPartition names a partition of one of the consumed topics.
type topicPartition struct {
	topic     string
	partition int32
}

func (s *store) insertPositions(ctx context.Context, next map[topicPartition]int64, clusterID string) error {
	if len(next) == 0 {
		return nil
	}
	b, err := s.conn.PrepareBatch(ctx, "INSERT INTO cogs_positions (topic, partition, next_offset, cluster_id, updated_at)")
	if err != nil {
		return fmt.Errorf("cogs: store positions: %w", err)
	}
	defer b.Abort() //nolint:errcheck // no-op after Send
	now := time.Now().UTC().Truncate(time.Second)
	for tp, off := range next {
		if err := b.Append(tp.topic, tp.partition, uint64(off), clusterID, now); err != nil {
			return fmt.Errorf("cogs: store positions: %w", err)
		}
	}
	if err := b.Send(); err != nil {
		return fmt.Errorf("cogs: store positions: %w", err)
	}
	return nil
}

// positions reads the stored positions and the Kafka clusters they were
// written against.
func (s *store) positions(ctx context.Context) (map[topicPartition]int64, map[string]bool, error) {
	rows, err := s.conn.Query(ctx, `SELECT topic, partition, max(next_offset), groupUniqArray(cluster_id)
		FROM cogs_positions GROUP BY topic, partition`)
	if err != nil {
		return nil, nil, fmt.Errorf("cogs: load positions: %w (is the database migrated? run companyos migrate)", err)
	}
	defer rows.Close()
	out := map[topicPartition]int64{}
	clusters := map[string]bool{}
	for rows.Next() {
		var tp topicPartition
		var next uint64
		var cs []string
		if err := rows.Scan(&tp.topic, &tp.partition, &next, &cs); err != nil {
			return nil, nil, fmt.Errorf("cogs: load positions: %w", err)
		}
		out[tp] = int64(next)
		for _, c := range cs {
			clusters[c] = true
		}
	}
	return out, clusters, rows.Err()
}

// priceRow is one pricing.set receipt, as stored in prices.
type priceRow struct {
	meter, unit, currency, region, appliesTo string
	unitPrice                                *big.Int // scaled by 10^PriceScale
	effectiveFrom                            time.Time
	receiptID                                string
	receiptSeq                               uint64
	receiptTenant, actor, commandID, keyID   string
	policyVersion                            string
	createdAt                                time.Time
	pos                                      position
}

func (s *store) insertPrices(ctx context.Context, ps []*priceRow) error {
	if len(ps) == 0 {
		return nil
	}
	b, err := s.conn.PrepareBatch(ctx, `INSERT INTO prices (meter, unit, currency, region, applies_to_tenant, unit_price,
		effective_from, receipt_id, receipt_seq, receipt_tenant, actor, command_id, key_id, policy_version, created_at,
		kafka_partition, kafka_offset, projected_at)`)
	if err != nil {
		return fmt.Errorf("cogs: insert prices: %w", err)
	}
	defer b.Abort() //nolint:errcheck // no-op after Send
	now := time.Now().UTC().Truncate(time.Second)
	for _, p := range ps {
		if err := b.Append(p.meter, p.unit, p.currency, p.region, p.appliesTo, formatFixed(p.unitPrice, PriceScale),
			p.effectiveFrom, p.receiptID, p.receiptSeq, p.receiptTenant, p.actor, p.commandID, p.keyID, p.policyVersion,
			p.createdAt, p.pos.partition, p.pos.offset, now); err != nil {
			return fmt.Errorf("cogs: insert prices: %w", err)
		}
	}
	if err := b.Send(); err != nil {
		return fmt.Errorf("cogs: insert prices: %w", err)
	}
	return nil
}

// toFixed converts d to an integer scaled by 10^scale, exactly.
func toFixed(d Decimal, scale int) (*big.Int, error) {
	r := d.Rat()
	n := new(big.Int).Mul(r.Num(), new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(scale)), nil))
	q, m := new(big.Int).QuoRem(n, r.Denom(), new(big.Int))
	if m.Sign() != 0 {
		return nil, fmt.Errorf("cogs: %s has more than %d decimal places", d, scale)
	}
	return q, nil
}

// StoredPositions returns the projector's positions as stored in ClickHouse:
// topic → partition → next offset not yet projected (nor sent to the DLQ).
// Compared with the topics' end offsets it gives the projector's lag.
func StoredPositions(ctx context.Context, conn driver.Conn) (map[string]map[int32]int64, error) {
	ps, _, err := (&store{conn: conn}).positions(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]map[int32]int64{}
	for tp, n := range ps {
		if out[tp.topic] == nil {
			out[tp.topic] = map[int32]int64{}
		}
		out[tp.topic][tp.partition] = n
	}
	return out, nil
}
