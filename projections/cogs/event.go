package cogs

import (
	"errors"
	"fmt"
	"math/big"
	"strings"
	"sync"
	"time"
)

// Reasons a message goes to the DLQ, in its "reason" header.
const (
	ReasonBadJSON        = "bad_json"        // the value is not a metering event (JSON)
	ReasonInvalidEvent   = "invalid_event"   // a required attribute is missing or out of range
	ReasonInvalidDecimal = "invalid_decimal" // quantity is not a plain decimal that Decimal(38, 9) holds exactly
	ReasonUnknownMeter   = "unknown_meter"   // the meter is not in tag_rules.yaml
	ReasonUnknownUnit    = "unknown_unit"    // the unit is not the meter's
	ReasonInvalidPrice   = "invalid_price"   // an allowed pricing.set receipt whose command cannot be projected
	ReasonBadEnvelope    = "bad_envelope"    // a companyos.events.v1 record that is not a receipt envelope
	ReasonBadSignature   = "bad_signature"   // a pricing.set receipt whose signature does not verify
	ReasonPanic          = "panic"           // the handler panicked on every attempt
)

// errPoison marks errors that send a message to the DLQ.
var errPoison = errors.New("cogs: poison message")

// poisonError is a message the projector can never apply.
type poisonError struct {
	reason string
	detail string
}

func poison(reason, format string, args ...any) error {
	return &poisonError{reason: reason, detail: fmt.Sprintf(format, args...)}
}

func (e *poisonError) Error() string { return "cogs: " + e.reason + ": " + e.detail }

func (e *poisonError) Is(target error) bool { return target == errPoison }

// reasonOf returns the DLQ reason of err.
func reasonOf(err error) string {
	var pe *poisonError
	if errors.As(err, &pe) {
		return pe.reason
	}
	return ""
}

// eventKey identifies a metering event: (tenant, source, id) within the
// event's hour (Unix seconds). An event never changes, so its hour is part of
// it; the hour lets look-ups use the primary index (0001_metering_events.sql).
type eventKey struct {
	tenant string
	hour   int64
	source string
	id     string
}

// position is where an occurrence of an event sits in metering.events.v1.
type position struct {
	partition int32
	offset    int64
}

func (p position) less(q position) bool {
	return p.partition < q.partition || p.partition == q.partition && p.offset < q.offset
}

// eventRow is a parsed, normalised metering event.
type eventRow struct {
	key      eventKey
	fp       uint64 // fingerprint(source, id), see keyIndex
	pos      position
	time     time.Time // UTC, whole seconds
	nanos    uint32
	hour     time.Time
	meter    string
	unit     string
	quantity *big.Int // scaled by 10^QuantityScale
	tags     Tags

	rawSubject string
	rawUnit    string
	rawTags    string
}

// DateTime's range on every ClickHouse release.
var (
	minDateTime = time.Unix(0, 0).UTC()
	maxDateTime = time.Unix(1<<32-1, 0).UTC()
)

// eventParser decodes and normalises records of metering.events.v1. It is
// safe for concurrent use (every partition's handler shares one).
type eventParser struct {
	rules   *Rules
	tags    tagCache
	strings *interner
	fp      func(source, id string) uint64 // fingerprint (tests weaken it)
}

func newEventParser(rules *Rules) *eventParser {
	return &eventParser{rules: rules, strings: newInterner(), fp: fingerprint}
}

// parseEvent decodes and normalises one record of metering.events.v1. The
// error is a poison error: the record can never be projected as it is.
func parseEvent(rules *Rules, value, recordKey []byte, pos position) (*eventRow, error) {
	return newEventParser(rules).parse(value, recordKey, pos)
}

// parseScratch is reusable memory of one parse (pooled rather than on the
// stack: handlers run on fresh goroutines, whose small stacks would grow).
type parseScratch struct {
	tags []tagPair
	buf  []byte
}

var scratchPool = sync.Pool{New: func() any { return &parseScratch{tags: make([]tagPair, 0, 16), buf: make([]byte, 0, 512)} }}

func (p *eventParser) parse(value, recordKey []byte, pos position) (*eventRow, error) {
	sc := scratchPool.Get().(*parseScratch)
	defer scratchPool.Put(sc)
	e, tags, err := decodeEvent(value, sc.tags[:0], p.strings)
	sc.tags = tags[:0]
	if err != nil {
		return nil, poison(ReasonBadJSON, "%v", err)
	}
	var missing []string
	if e.SpecVersion != "1.0" {
		return nil, poison(ReasonInvalidEvent, "specversion %q, want 1.0", e.SpecVersion)
	}
	if strings.TrimSpace(e.ID) == "" {
		missing = append(missing, "id")
	}
	if strings.TrimSpace(e.Source) == "" {
		missing = append(missing, "source")
	}
	if strings.TrimSpace(e.Type) == "" {
		missing = append(missing, "type")
	}
	if e.Time.IsZero() {
		missing = append(missing, "time")
	}
	if len(missing) > 0 {
		return nil, poison(ReasonInvalidEvent, "missing %s", strings.Join(missing, ", "))
	}
	t := e.Time.UTC()
	if t.Before(minDateTime) || !t.Before(maxDateTime) {
		return nil, poison(ReasonInvalidEvent, "time %s outside 1970..2106", e.Time.Format(time.RFC3339))
	}
	q, err := parseFixed(e.Data.Quantity, QuantityScale, maxQuantityIntDigits)
	if err != nil {
		return nil, poison(ReasonInvalidDecimal, "quantity: %v", err)
	}
	meter, ok := p.rules.Meter(e.Type)
	if !ok {
		return nil, poison(ReasonUnknownMeter, "meter %q is not in tag_rules.yaml", e.Type)
	}
	unit, ok := p.rules.Unit(meter, e.Data.Unit)
	if !ok {
		return nil, poison(ReasonUnknownUnit, "unit %q is not a unit of meter %s", e.Data.Unit, meter)
	}
	te, buf, err := p.tags.lookup(p.rules, tags, sc.buf[:0])
	sc.buf = buf[:0]
	if err != nil {
		return nil, poison(ReasonBadJSON, "tags: %v", err)
	}
	sec, hour := t.Truncate(time.Second), t.Truncate(time.Hour)
	return &eventRow{
		key:        eventKey{tenant: attributeTenant(e.Subject, string(recordKey)), hour: hour.Unix(), source: e.Source, id: e.ID},
		fp:         p.fp(e.Source, e.ID),
		pos:        pos,
		time:       sec,
		nanos:      uint32(t.Sub(sec)),
		hour:       hour,
		meter:      meter,
		unit:       unit,
		quantity:   q,
		tags:       te.tags,
		rawSubject: e.Subject,
		rawUnit:    e.Data.Unit,
		rawTags:    te.raw,
	}, nil
}

// attributeTenant returns the tenant of an event: its subject, else the
// record key (the ingest API keys records by tenant), trimmed and
// lower-cased, if that is a tenant name (auth.TenantPattern); otherwise
// Unattributed.
func attributeTenant(subject, recordKey string) string {
	for _, s := range []string{subject, recordKey} {
		if t := strings.ToLower(strings.TrimSpace(s)); isTenantName(t) {
			return t
		}
	}
	return Unattributed
}

// isTenantName is auth.TenantPattern (^[a-z0-9][a-z0-9-]{0,62}$) without
// the regexp engine, which cost a tenth of the parse of an event
// (unit_test.go checks both agree).
func isTenantName(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}
