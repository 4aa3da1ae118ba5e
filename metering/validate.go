package metering

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/companyos/companyos/auth"
	"github.com/companyos/companyos/internal/httpx"
)

// SpecVersion is the only CloudEvents specversion accepted.
const SpecVersion = "1.0"

// Event limits, checked at ingest.
const (
	MaxEventBytes     = 64 << 10 // one event's JSON
	MaxIDChars        = 256
	MaxSourceChars    = 1024
	MaxMeterChars     = 128
	MaxTags           = 32
	MaxTagKeyChars    = 64
	MaxTagValueChars  = 256
	maxAttributes     = 32 // members of the event object, extensions included
	jsonContentType   = "application/json"
	DefaultFutureSkew = 5 * time.Minute
)

var (
	// MeterPattern is what a meter (the event type) looks like: two to five
	// dot-separated lowercase segments, namespace first, e.g.
	// "compute.cpu_seconds" or "storage.object.byte_seconds".
	MeterPattern = regexp.MustCompile(`^[a-z][a-z0-9_]{0,63}(\.[a-z][a-z0-9_]{0,63}){1,4}$`)
	// UnitPattern is what a unit looks like: "second", "byte", "gib_hour".
	UnitPattern = regexp.MustCompile(`^[a-z][a-z0-9_]{0,31}$`)
	// extensionName is the CloudEvents 1.0 attribute naming rule.
	extensionName = regexp.MustCompile(`^[a-z0-9]{1,20}$`)
	// minTime: ClickHouse DateTime starts at the Unix epoch.
	minTime = time.Unix(0, 0).UTC()
)

// FieldError is one invalid field; Field is a JSON path relative to the
// event, such as "data.quantity" or "data.tags.region".
type FieldError = httpx.FieldError

// ValidationError lists every problem found in one event.
type ValidationError struct {
	Errors []FieldError
	// Malformed is set when the input is not a JSON object at all (HTTP 400
	// rather than 422 for a single event).
	Malformed bool
}

func (e *ValidationError) Error() string {
	parts := make([]string, len(e.Errors))
	for i, fe := range e.Errors {
		parts[i] = fe.Field + ": " + fe.Detail
	}
	return "metering: invalid event: " + strings.Join(parts, "; ")
}

func (e *ValidationError) add(field, format string, args ...any) {
	e.Errors = append(e.Errors, FieldError{Field: field, Detail: fmt.Sprintf(format, args...)})
}

// Validator decodes and validates incoming CloudEvents. The zero value
// allows DefaultFutureSkew and reads time.Now.
type Validator struct {
	// MaxFutureSkew is how far past now an event's time may lie (optional,
	// default DefaultFutureSkew).
	MaxFutureSkew time.Duration
	// Now is the clock (optional, default time.Now).
	Now func() time.Time
}

// DecodeEvent decodes one CloudEvent with the zero Validator.
func DecodeEvent(raw []byte) (Event, error) { return Validator{}.Decode(raw) }

// Decode parses one CloudEvents 1.0 event in JSON format (structured mode)
// and validates it. It returns the event with a normalised quantity, UTC
// time and datacontenttype "application/json" when one was sent, or a
// *ValidationError naming every invalid field.
//
// Attribute names are matched exactly (case-sensitively) and may appear
// once; an attribute whose value is null is absent. Extension attributes
// (CloudEvents naming: 1-20 lowercase letters or digits, with a string,
// number, boolean or null value) are accepted and dropped: the stored Event
// carries the metering attributes only. data must be an object with the
// members quantity, unit and (optional) tags; data_base64 is refused.
func (v Validator) Decode(raw []byte) (Event, error) {
	if len(raw) > MaxEventBytes {
		ve := &ValidationError{Malformed: true}
		ve.add("body", "the event is %d bytes, more than %d", len(raw), MaxEventBytes)
		return Event{}, ve
	}
	s := &scanner{buf: raw}
	e, _, ve, err := v.decodeValue(s)
	if err == nil && !s.atEnd() {
		err = s.fail("data after the event")
	}
	if err != nil {
		ve = &ValidationError{Malformed: true}
		ve.add("body", "%v", err)
	}
	if ve != nil {
		return Event{}, ve
	}
	return e, nil
}

// fieldName keeps an unknown member name printable and short in errors.
func fieldName(k string) string {
	if len(k) > 64 || !utf8.ValidString(k) || strings.IndexFunc(k, unicode.IsControl) >= 0 {
		return fmt.Sprintf("%.64q", k)
	}
	return k
}

// checkAttributes validates the string attributes that were present.
func (e *Event) checkAttributes(ve *ValidationError) {
	if e.ID != "" {
		if err := checkText(e.ID, MaxIDChars); err != nil {
			ve.add("id", "%v", err)
		}
	}
	if e.Source != "" {
		if err := checkText(e.Source, MaxSourceChars); err != nil {
			ve.add("source", "%v", err)
		} else if strings.ContainsAny(e.Source, " \t") {
			ve.add("source", "must be a URI-reference without spaces")
		} else if _, err := url.Parse(e.Source); err != nil {
			ve.add("source", "must be a URI-reference: %v", err)
		}
	}
	if e.Type != "" && !isMeter(e.Type) {
		ve.add("type", "must be a meter name such as \"compute.cpu_seconds\" (%s, at most %d characters), got %.80q", MeterPattern, MaxMeterChars, e.Type)
	}
	if e.Subject != "" && !isTenant(e.Subject) {
		ve.add("subject", "must be a tenant name (%s), got %.80q", auth.TenantPattern, e.Subject)
	}
}

// isMeter, isUnit and isTenant are MeterPattern, UnitPattern and
// auth.TenantPattern without the regexp engine (a fifth of the decode time);
// a test holds them to the patterns.
func isMeter(s string) bool {
	if len(s) > MaxMeterChars {
		return false
	}
	segments := 0
	for len(s) > 0 {
		seg, rest, more := strings.Cut(s, ".")
		if len(seg) > 64 || !isLowerIdent(seg) {
			return false
		}
		segments++
		s = rest
		if more && rest == "" {
			return false
		}
	}
	return segments >= 2 && segments <= 5
}

func isUnit(s string) bool { return len(s) <= 32 && isLowerIdent(s) }

// isLowerIdent: [a-z][a-z0-9_]*.
func isLowerIdent(s string) bool {
	if s == "" || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

func isTenant(s string) bool {
	if s == "" || len(s) > 63 || s[0] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// checkText: valid UTF-8, no control characters, at most max bytes.
func checkText(s string, max int) error {
	switch {
	case len(s) > max:
		return fmt.Errorf("must be at most %d bytes, got %d", max, len(s))
	case !utf8.ValidString(s):
		return errors.New("must be valid UTF-8")
	case strings.IndexFunc(s, unicode.IsControl) >= 0:
		return errors.New("must not contain control characters")
	}
	return nil
}

// Validate checks an Event as stored on metering.events.v1 (what a consumer
// may rely on): every attribute well formed, the quantity canonical, the time
// set. It does not check the time against a clock.
func (e Event) Validate() error {
	ve := &ValidationError{}
	if e.SpecVersion != SpecVersion {
		ve.add("specversion", "must be %q, got %q", SpecVersion, e.SpecVersion)
	}
	for _, f := range []struct{ name, v string }{{"id", e.ID}, {"source", e.Source}, {"type", e.Type}, {"subject", e.Subject}} {
		if f.v == "" {
			ve.add(f.name, "required")
		}
	}
	e.checkAttributes(ve)
	if e.Time.IsZero() || e.Time.Before(minTime) {
		ve.add("time", "required, at or after 1970-01-01T00:00:00Z")
	}
	if e.DataContentType != "" && e.DataContentType != jsonContentType {
		ve.add("datacontenttype", "must be %q when present", jsonContentType)
	}
	if !IsCanonicalQuantity(e.Data.Quantity) {
		ve.add("data.quantity", "must be a normalised non-negative decimal, got %q", e.Data.Quantity)
	}
	if !isUnit(e.Data.Unit) {
		ve.add("data.unit", "must match %s, got %q", UnitPattern, e.Data.Unit)
	}
	if len(e.Data.Tags) > MaxTags {
		ve.add("data.tags", "has %d tags, at most %d are allowed", len(e.Data.Tags), MaxTags)
	}
	for k, v := range e.Data.Tags {
		if k == "" || checkText(k, MaxTagKeyChars) != nil || checkText(v, MaxTagValueChars) != nil {
			ve.add("data.tags."+fieldName(k), "invalid tag")
		}
	}
	if len(ve.Errors) > 0 {
		slices.SortStableFunc(ve.Errors, func(a, b FieldError) int { return strings.Compare(a.Field, b.Field) })
		return ve
	}
	return nil
}
