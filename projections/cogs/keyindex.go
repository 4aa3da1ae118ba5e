package cogs

import (
	"context"
	"crypto/md5"
	"encoding/binary"
	"fmt"
	"math/bits"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/ext"
)

// keyIndex answers "is this event key stored in metering_events?" from
// memory, so that a flush looks up in ClickHouse only the keys that may be
// stored (doc.go, claim 1).
//
// Per (tenant, hour) it holds the fingerprints of every key stored in that
// range of metering_events: loaded from ClickHouse the first time a batch
// touches the range, extended by every flush after its insert succeeded,
// forgotten after an insert that returned an error (it may or may not have
// been stored, so the next attempt loads the range again), and dropped when
// the range was idle for a while or memory is over its budget. A key whose
// fingerprint is absent from a held range is not stored; a key whose
// fingerprint is present (a duplicate, a replayed record, or a collision of
// 64-bit fingerprints) is looked up in ClickHouse, which has the final say.
//
// The fingerprint is the first 8 bytes of MD5(source || 0x00 || id), read
// little-endian: ClickHouse computes the same value
// (reinterpretAsUInt64(MD5(concat(source, '\0', id)))), so a range loads as
// one column of UInt64. An ambiguous concatenation (a source containing a
// NUL byte) can only cause a collision, which the look-up resolves.
//
// Memory: 11 to 21 bytes per stored event of the ranges held (fpSet). The
// budget (maxKeys) drops the ranges the latest flush did not touch; the
// ranges a flush touches are always held, so live traffic into one hour
// keeps that hour's fingerprints until the hour goes idle.
type keyIndex struct {
	idle    time.Duration
	maxKeys int
	fpSQL   string // the fingerprint of a row in ClickHouse: fingerprintSQL
	ranges  map[tenantHour]*keyRange
	held    int    // fingerprints held, plus one per range
	gen     uint64 // flushes so far: a range remembers the last that touched it
	swept   time.Time
}

type tenantHour struct {
	tenant string
	hour   int64
}

type keyRange struct {
	fps     fpSet
	touched time.Time
	gen     uint64
}

func newKeyIndex(idle time.Duration, maxKeys int, fpSQL string) *keyIndex {
	return &keyIndex{idle: idle, maxKeys: maxKeys, fpSQL: fpSQL, ranges: map[tenantHour]*keyRange{}}
}

// fingerprintSQL computes fingerprint(source, id) in ClickHouse.
const fingerprintSQL = `reinterpretAsUInt64(MD5(concat(source, '\0', id)))`

// fingerprint of an event key within its (tenant, hour).
func fingerprint(source, id string) uint64 {
	var stack [192]byte
	b := stack[:0]
	if len(source)+len(id)+1 > len(stack) {
		b = make([]byte, 0, len(source)+len(id)+1)
	}
	b = append(b, source...)
	b = append(b, 0)
	b = append(b, id...)
	sum := md5.Sum(b)
	return binary.LittleEndian.Uint64(sum[:8])
}

// candidates loads the ranges of keys not held yet and returns the keys
// that may be stored: those whose fingerprint a range holds. fps[i] is the
// fingerprint of keys[i]. Each call is one flush.
func (x *keyIndex) candidates(ctx context.Context, s *store, keys []eventKey, fps []uint64, now time.Time) ([]eventKey, error) {
	x.gen++
	var missing []tenantHour
	for _, k := range keys {
		th := tenantHour{k.tenant, k.hour}
		r := x.ranges[th]
		if r == nil {
			r = &keyRange{}
			x.ranges[th] = r
			x.held++
			missing = append(missing, th)
		}
		r.touched, r.gen = now, x.gen
	}
	if len(missing) > 0 {
		if err := x.load(ctx, s, missing); err != nil {
			for _, th := range missing {
				x.drop(th)
			}
			return nil, err
		}
	}
	var out []eventKey
	for i, k := range keys {
		if x.ranges[tenantHour{k.tenant, k.hour}].fps.has(fps[i]) {
			out = append(out, k)
		}
	}
	return out, nil
}

// load reads the fingerprints of the stored keys of the given ranges.
func (x *keyIndex) load(ctx context.Context, s *store, ths []tenantHour) error {
	tbl, err := ext.NewTable("touched", ext.Column("tenant", "String"), ext.Column("hour", "DateTime('UTC')"))
	if err != nil {
		return err
	}
	for _, th := range ths {
		if err := tbl.Append(th.tenant, time.Unix(th.hour, 0).UTC()); err != nil {
			return fmt.Errorf("cogs: range table: %w", err)
		}
	}
	rows, err := s.conn.Query(clickhouse.Context(ctx, clickhouse.WithExternalTable(tbl)),
		`SELECT tenant, hour, `+x.fpSQL+` FROM metering_events
		 WHERE (tenant, hour) IN (SELECT tenant, hour FROM touched)`)
	if err != nil {
		return fmt.Errorf("cogs: load event keys: %w", err)
	}
	defer rows.Close()
	var tenant string
	var hour time.Time
	var fp uint64
	for rows.Next() {
		if err := rows.Scan(&tenant, &hour, &fp); err != nil {
			return fmt.Errorf("cogs: load event keys: %w", err)
		}
		r := x.ranges[tenantHour{tenant, hour.Unix()}]
		if r == nil {
			return fmt.Errorf("cogs: load event keys: unexpected range %s %s", tenant, hour)
		}
		x.held += r.fps.add(fp)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("cogs: load event keys: %w", err)
	}
	return nil
}

// add records rows just stored in metering_events.
func (x *keyIndex) add(rows []*eventRow) {
	for _, r := range rows {
		if kr := x.ranges[tenantHour{r.key.tenant, r.key.hour}]; kr != nil {
			x.held += kr.fps.add(r.fp)
		}
	}
}

// forget drops the ranges of rows whose insert may or may not have been
// stored: the next look-up loads them again from ClickHouse.
func (x *keyIndex) forget(rows []*eventRow) {
	for _, r := range rows {
		x.drop(tenantHour{r.key.tenant, r.key.hour})
	}
}

func (x *keyIndex) drop(th tenantHour) {
	if r := x.ranges[th]; r != nil {
		x.held -= r.fps.len() + 1
		delete(x.ranges, th)
	}
}

// evict drops, when over budget, every range the latest flush did not
// touch, and, at most once a minute, the ranges idle for longer than idle.
func (x *keyIndex) evict(now time.Time) {
	over := x.held > x.maxKeys
	if !over && now.Sub(x.swept) < time.Minute {
		return
	}
	x.swept = now
	for th, r := range x.ranges {
		if over && r.gen < x.gen || now.Sub(r.touched) > x.idle {
			x.drop(th)
		}
	}
}

// size is the number of fingerprints held (plus one per range).
func (x *keyIndex) size() int { return x.held }

// bucketMemo holds the current row of the usage_hourly buckets of recent
// hours (the hour of now, the one before and the one after), which live
// traffic touches in every flush, so that a flush reads from ClickHouse
// only the buckets it has not seen (doc.go, claim 2). An entry equals what
// ClickHouse holds because the projector is the only writer of its
// database: it changes only after its row was written, and is dropped when
// a write returned an error (it may or may not have happened). Buckets of
// other hours — a replay of history — are read every time, as they are
// rarely touched twice.
type bucketMemo struct {
	m     map[bucketKey]bucketState
	swept time.Time
}

func newBucketMemo() *bucketMemo { return &bucketMemo{m: map[bucketKey]bucketState{}} }

func hotHour(hour int64, now time.Time) bool {
	cur := now.Truncate(time.Hour).Unix()
	return hour >= cur-3600 && hour <= cur+3600
}

func (b *bucketMemo) get(k bucketKey) (bucketState, bool) {
	st, ok := b.m[k]
	return st, ok
}

// put records the current row of a bucket (read, or just written).
func (b *bucketMemo) put(k bucketKey, st bucketState, now time.Time) {
	if hotHour(k.hour, now) {
		b.m[k] = st
	}
}

// forget drops buckets whose write may or may not have happened.
func (b *bucketMemo) forget(states map[bucketKey]bucketState) {
	for k := range states {
		delete(b.m, k)
	}
}

// evict drops, at most once a minute, the buckets of hours no longer hot.
func (b *bucketMemo) evict(now time.Time) {
	if now.Sub(b.swept) < time.Minute {
		return
	}
	b.swept = now
	for k := range b.m {
		if !hotHour(k.hour, now) {
			delete(b.m, k)
		}
	}
}

// fpSet is a set of fingerprints: open addressing with linear probing in a
// power-of-two table kept between 3/8 and 3/4 full, so 11 to 21 bytes per
// fingerprint (a Go map[uint64]struct{} took 25 to 38).
type fpSet struct {
	slots []uint64 // 0 = empty
	n     int      // fingerprints in slots
	zero  bool     // whether fingerprint 0 is in the set
}

// slot is where probing for fp starts (Fibonacci hashing, so that
// fingerprints that are not uniformly spread still spread).
func (s *fpSet) slot(fp uint64) int {
	return int((fp * 0x9e3779b97f4a7c15) >> (64 - bits.Len(uint(len(s.slots)-1))))
}

func (s *fpSet) has(fp uint64) bool {
	if fp == 0 {
		return s.zero
	}
	if len(s.slots) == 0 {
		return false
	}
	mask := len(s.slots) - 1
	for i := s.slot(fp); ; i = (i + 1) & mask {
		switch s.slots[i] {
		case fp:
			return true
		case 0:
			return false
		}
	}
}

// add inserts fp and returns 1 if it was new, else 0.
func (s *fpSet) add(fp uint64) int {
	if fp == 0 {
		if s.zero {
			return 0
		}
		s.zero = true
		return 1
	}
	if 4*(s.n+1) > 3*len(s.slots) {
		s.grow()
	}
	mask := len(s.slots) - 1
	for i := s.slot(fp); ; i = (i + 1) & mask {
		switch s.slots[i] {
		case fp:
			return 0
		case 0:
			s.slots[i] = fp
			s.n++
			return 1
		}
	}
}

func (s *fpSet) grow() {
	old := s.slots
	s.slots = make([]uint64, max(64, 2*len(old)))
	s.n = 0
	for _, fp := range old {
		if fp != 0 {
			s.add(fp)
		}
	}
}

func (s *fpSet) len() int {
	if s.zero {
		return s.n + 1
	}
	return s.n
}
