package cogs

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"

	"github.com/companyos/companyos/auth"
	"github.com/companyos/companyos/metering"
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

// parseEvent decodes and normalises one record of metering.events.v1. The
// error is a poison error: the record can never be projected as it is.
func parseEvent(rules *Rules, value, recordKey []byte, pos position) (*eventRow, error) {
	var e metering.Event
	if err := json.Unmarshal(value, &e); err != nil {
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
	meter, ok := rules.Meter(e.Type)
	if !ok {
		return nil, poison(ReasonUnknownMeter, "meter %q is not in tag_rules.yaml", e.Type)
	}
	unit, ok := rules.Unit(meter, e.Data.Unit)
	if !ok {
		return nil, poison(ReasonUnknownUnit, "unit %q is not a unit of meter %s", e.Data.Unit, meter)
	}
	rawTags := []byte("{}")
	if len(e.Data.Tags) > 0 {
		if rawTags, err = json.Marshal(e.Data.Tags); err != nil {
			return nil, poison(ReasonBadJSON, "tags: %v", err)
		}
	}
	sec, hour := t.Truncate(time.Second), t.Truncate(time.Hour)
	return &eventRow{
		key:        eventKey{tenant: attributeTenant(e.Subject, string(recordKey)), hour: hour.Unix(), source: e.Source, id: e.ID},
		pos:        pos,
		time:       sec,
		nanos:      uint32(t.Sub(sec)),
		hour:       hour,
		meter:      meter,
		unit:       unit,
		quantity:   q,
		tags:       rules.NormalizeTags(e.Data.Tags),
		rawSubject: e.Subject,
		rawUnit:    e.Data.Unit,
		rawTags:    string(rawTags),
	}, nil
}

// attributeTenant returns the tenant of an event: its subject, else the
// record key (the ingest API keys records by tenant), trimmed and
// lower-cased, if that is a tenant name (auth.TenantPattern); otherwise
// Unattributed.
func attributeTenant(subject, recordKey string) string {
	for _, s := range []string{subject, recordKey} {
		if t := strings.ToLower(strings.TrimSpace(s)); auth.TenantPattern.MatchString(t) {
			return t
		}
	}
	return Unattributed
}
