// Package cogs owns the COGS read model in ClickHouse: the projection of
// metering.events.v1 (raw events, hourly usage) and of the pricing.set
// receipts of companyos.events.v1 (the unit-price catalog), the schema
// migrations of schemas/clickhouse, tag normalisation
// (schemas/clickhouse/tag_rules.yaml), and the FinOps queries
// (schemas/clickhouse/queries) with the anomaly gauge built on them.
//
// It reads the log and writes only its own ClickHouse tables; it produces
// only to companyos.dlq.v1. It must not write Postgres, decide commands or
// change the metering contract (package metering owns it). Every table here
// can be rebuilt by replaying the topics into an empty database.
//
// # Exactly once, without transactions
//
// ClickHouse has no transactions, Kafka delivers at least once, and a
// metering event may be sent twice. COGS must still be exact: every event
// counted once. The argument, one claim at a time:
//
//  1. Identity. An event is (tenant, source, id), and it is immutable, so
//     its hour is part of it too: the key is (tenant, hour, source, id).
//     Its first stored occurrence wins: the projector counts an occurrence
//     only when metering_events holds no other occurrence of the key (a
//     primary-key look-up) and it is the earliest one in the batch. The
//     look-up runs after every earlier flush has written its events, so the
//     decision for an occurrence is the same on every replay: a replayed
//     event finds itself (same partition and offset) and counts again; a
//     duplicate finds the winner and never counts. (The hour is in the key
//     so that look-ups read index ranges in proportion to the batch rather
//     than the table. The price: an id re-sent with a time in another hour
//     — a producer bug; the ingest API drops ids it has seen within its dedupe
//     window — counts as another event.)
//
//     The look-up is answered from memory where it can be (keyindex.go).
//     For every (tenant, hour) a batch touches, the projector holds the
//     64-bit fingerprints of all keys stored in that range of
//     metering_events: read from ClickHouse (which computes the same
//     fingerprint) the first time, extended after each successful insert of
//     events, dropped when an insert returns an error (it may or may not
//     have been stored; the next attempt reads the range again) and after
//     the range was idle for MemoIdle. So the held set always contains the
//     fingerprint of every stored key of the range, and a key whose
//     fingerprint it lacks is not stored. Only keys whose fingerprint it
//     holds — duplicates, records replayed after a crash, and 64-bit
//     collisions — are looked up in ClickHouse, which decides as before. The
//     decision is therefore exactly the one a look-up of every key would
//     make, at a cost that no longer grows with the hour's size.
//
//  2. Hourly usage is idempotent. usage_hourly keeps one row per bucket
//     (tenant, hour, service, region, team, meter, unit) and Kafka partition,
//     with through_offset: the row includes exactly the counted events of
//     that partition below through_offset that fall into the bucket. Records
//     of a partition are handled in offset order, so a flush reads the
//     current row of each touched bucket, adds only counted events at or
//     above through_offset, and writes a new row whose through_offset is
//     how far the batch handled the partition. ReplacingMergeTree keeps the
//     row with the highest through_offset; readers take argMax(…,
//     through_offset) and so never depend on merges. Re-running a flush, with
//     the same or other batch boundaries, adds nothing already included.
//     The current row of a bucket this run has read or written comes from
//     memory: it is what ClickHouse holds, since the projector is the only
//     writer of its database, memory changes only after a successful
//     write, and an entry is dropped when a write returns an error.
//
//  3. Order of writes. A flush writes new events, then hourly rows, then
//     prices, then the positions (per partition, the next offset that is
//     neither in ClickHouse nor in the DLQ). A crash between any two writes
//     leaves positions that do not yet cover the batch; the next run starts
//     there, and by 1 and 2 the replay changes nothing already written and
//     adds what is missing. A materialized view would not do: it sees
//     replayed blocks again, and the insert into its source can succeed
//     while the push into the view fails.
//
//  4. Offsets. The projector acks a message once it is in the in-memory
//     batch, so batches can hold thousands of events even though wmkafka
//     hands out one message per partition at a time. (Handlers run on a
//     small pool of long-lived goroutines, warm.go, rather than on the
//     goroutine watermill starts per message; that changes where, not
//     whether or in which order, a message is handled.) Its consumer groups are
//     per run and positioned from ClickHouse at start, so their Kafka commits
//     never decide where consumption resumes: only positions written after
//     the rows do.
//
//  5. Prices are rows keyed by receipt id; a replayed receipt stores the same
//     row again and prices_current groups by receipt id.
//
// The limits of the argument: one projector per ClickHouse database (two
// racing projectors could both count an event whose duplicate sits in
// another partition; and each would trust its memory of ranges and buckets
// the other also writes), and a metering event's key must map to one
// partition (records are keyed by tenant) for "earliest occurrence" to mean
// the same to every replay. Memory: 11 to 21 bytes per stored event of the
// hours that received events within MemoIdle — at 50,000 events/s into
// one hour, 2 to 4 GB by the end of that hour.
//
// # ClickHouse 18.16
//
// Tests run on Debian's 18.16, which has no DateTime64, window functions or
// Map, and crashes (the server, not the query) when a Decimal128 column is a
// GROUP BY key: Decimals appear only as aggregate arguments. Event times are
// stored as DateTime plus nanoseconds; tags as parallel arrays next to the
// raw JSON; statistics use self-joins with arrayJoin.
package cogs
