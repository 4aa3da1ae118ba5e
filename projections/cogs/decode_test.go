package cogs

import (
	"encoding/json"
	"fmt"
	"math/big"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/companyos/companyos/auth"
	"github.com/companyos/companyos/metering"
)

// decodeCases are record values around the shape the ingest API writes:
// each either takes the fast path or is declined, never decoded
// differently from encoding/json.
var decodeCases = []string{
	`{"specversion":"1.0","id":"e1","source":"svc/api","type":"compute.cpu_seconds","subject":"acme","time":"2026-03-01T10:15:00.123456789Z","data":{"quantity":"1000","unit":"second","tags":{"service":"api","region":"eu"}}}`,
	`{"specversion":"1.0","id":"e1","source":"svc/api","type":"compute.cpu_seconds","subject":"acme","time":"2026-03-01T10:15:00+02:00","datacontenttype":"application/json","data":{"quantity":"1.5","unit":"s"}}`,
	` { "data" : { "tags" : { } , "unit" : "second" , "quantity" : "7" } , "time" : "2026-03-01T10:15:00Z" , "id" : "x" } `,
	`{"specversion":"1.0","id":"e1","source":"s","type":"t","time":"2026-03-01T10:15:00Z","data":{"quantity":"1","unit":"s","tags":{"Service":"API","b":"<&>","c":"é"}}}`,
	`{}`,
	`{"data":{}}`,
	// Declined: encoding/json decides.
	`{"ID":"upper case member"}`,
	`{"id":"a","id":"b"}`,
	`{"id":"esc\"aped"}`,
	`{"id":"tab	inside"}`,
	`{"id":null}`,
	`{"id":1}`,
	`{"unknown":"member","id":"a"}`,
	`{"data":{"quantity":1.5,"unit":"s"}}`,
	`{"data":{"tags":{"a":"1","a":"2"}}}`,
	`{"data":{"tags":{"a":1}}}`,
	`{"data":{"tags":null}}`,
	`{"data":null}`,
	`{"time":"2026-03-01 10:15:00Z"}`,
	`{"time":"2026-03-01T25:15:00Z"}`,
	`{"time":"2026-03-01T10:15:00"}`,
	`{"time":null}`,
	`{"id":"a"} trailing`,
	`{"id":"a"`,
	`{"id":"a",}`,
	`[]`,
	`"string"`,
	"{\"id\":\"\xff\xfe\"}",
	"\xef\xbb\xbf{\"id\":\"bom\"}",
	`{"id":"\u00e9"}`,
	`{"source":"a` + "\x00" + `b"}`,
}

// decodeFast must agree with encoding/json on every input it accepts.
func checkDecodeFast(t *testing.T, value []byte) (accepted bool) {
	t.Helper()
	var fast metering.Event
	tags, ok := decodeFast(value, &fast, nil, newInterner())
	if !ok {
		return false
	}
	var ref metering.Event
	if err := json.Unmarshal(value, &ref); err != nil {
		t.Fatalf("%q: the fast path accepted what encoding/json refuses: %v", value, err)
	}
	if len(tags) > 0 {
		fast.Data.Tags = map[string]string{}
		for _, p := range tags {
			fast.Data.Tags[p.key] = p.value
		}
	}
	if len(ref.Data.Tags) == 0 {
		ref.Data.Tags = nil
	}
	if !fast.Time.Equal(ref.Time) || fast.Time.IsZero() != ref.Time.IsZero() {
		t.Fatalf("%q: time %v, encoding/json %v", value, fast.Time, ref.Time)
	}
	fast.Time, ref.Time = time.Time{}, time.Time{}
	if !reflect.DeepEqual(fast, ref) {
		t.Fatalf("%q:\n fast %#v\n json %#v", value, fast, ref)
	}
	return true
}

func TestDecodeFastAgreesWithEncodingJSON(t *testing.T) {
	accepted := 0
	for _, c := range decodeCases {
		if checkDecodeFast(t, []byte(c)) {
			accepted++
		}
	}
	if accepted != 6 {
		t.Errorf("the fast path took %d of the first 6 cases (and no other)", accepted)
	}
	// What the ingest API writes always takes the fast path.
	e := metering.Event{SpecVersion: "1.0", ID: "id-1", Source: "//agent/7", Type: "compute.cpu_seconds", Subject: "acme",
		Time: time.Date(2026, 3, 1, 10, 15, 0, 120, time.UTC), DataContentType: "application/json",
		Data: metering.Data{Quantity: "12.5", Unit: "second", Tags: map[string]string{"service": "api", "region": "eu-west-1", "team": "a"}}}
	if !checkDecodeFast(t, metering.Record(e).Value) {
		t.Errorf("metering.Record's value was declined: %s", metering.Record(e).Value)
	}
}

func FuzzDecodeFast(f *testing.F) {
	for _, c := range decodeCases {
		f.Add([]byte(c))
	}
	f.Fuzz(func(t *testing.T, value []byte) { checkDecodeFast(t, value) })
}

// The whole parse, fast path or not, gives the row the encoding/json
// version gave.
func TestParseEventFastAndSlowAgree(t *testing.T) {
	r, _ := DefaultRules()
	p := newEventParser(r)
	for _, c := range decodeCases {
		got, gerr := p.parse([]byte(c), []byte("acme"), position{1, 2})
		want, werr := parseEventReference(r, []byte(c), []byte("acme"), position{1, 2})
		if reasonOf(gerr) != reasonOf(werr) || (gerr == nil) != (werr == nil) {
			t.Errorf("%q: error %v, reference %v", c, gerr, werr)
			continue
		}
		if gerr == nil {
			if got.quantity.Cmp(want.quantity) != 0 {
				t.Errorf("%q: quantity %v, reference %v", c, got.quantity, want.quantity)
			}
			got.fp, got.quantity, want.quantity = 0, nil, nil
			if !reflect.DeepEqual(got, want) {
				t.Errorf("%q:\n got  %+v\n want %+v", c, got, want)
			}
		}
	}
}

// parseEventReference is parseEvent as it was before the fast path:
// encoding/json, json.Marshal of the tags, NormalizeTags per event.
func parseEventReference(rules *Rules, value, recordKey []byte, pos position) (*eventRow, error) {
	var e metering.Event
	if err := json.Unmarshal(value, &e); err != nil {
		return nil, poison(ReasonBadJSON, "%v", err)
	}
	if e.SpecVersion != "1.0" || strings.TrimSpace(e.ID) == "" || strings.TrimSpace(e.Source) == "" ||
		strings.TrimSpace(e.Type) == "" || e.Time.IsZero() {
		return nil, poison(ReasonInvalidEvent, "invalid")
	}
	t := e.Time.UTC()
	if t.Before(minDateTime) || !t.Before(maxDateTime) {
		return nil, poison(ReasonInvalidEvent, "time")
	}
	q, err := parseFixed(e.Data.Quantity, QuantityScale, maxQuantityIntDigits)
	if err != nil {
		return nil, poison(ReasonInvalidDecimal, "quantity: %v", err)
	}
	meter, ok := rules.Meter(e.Type)
	if !ok {
		return nil, poison(ReasonUnknownMeter, "meter")
	}
	unit, ok := rules.Unit(meter, e.Data.Unit)
	if !ok {
		return nil, poison(ReasonUnknownUnit, "unit")
	}
	rawTags := []byte("{}")
	if len(e.Data.Tags) > 0 {
		rawTags, _ = json.Marshal(e.Data.Tags)
	}
	sec, hour := t.Truncate(time.Second), t.Truncate(time.Hour)
	return &eventRow{key: eventKey{tenant: attributeTenant(e.Subject, string(recordKey)), hour: hour.Unix(), source: e.Source, id: e.ID},
		pos: pos, time: sec, nanos: uint32(t.Sub(sec)), hour: hour, meter: meter, unit: unit, quantity: q,
		tags: rules.NormalizeTags(e.Data.Tags), rawSubject: e.Subject, rawUnit: e.Data.Unit, rawTags: string(rawTags)}, nil
}

func TestTagsJSONAgreesWithMarshal(t *testing.T) {
	for _, tags := range []map[string]string{
		{}, {"a": "1"}, {"service": "api", "region": "eu-west-1", "Team": "x y"},
		{"b": "2", "a": "1", "ab": "3", "A": "4"}, {"k": "<tag>"}, {"k": "q\"uote"}, {"é": "x"}, {"k": "\u2028"},
	} {
		var pairs []tagPair
		for k, v := range tags {
			pairs = append(pairs, tagPair{k, v})
		}
		var c tagCache
		r, _ := DefaultRules()
		e, _, err := c.lookup(r, sortedPairs(pairs), nil)
		if err != nil {
			t.Fatal(err)
		}
		want := "{}"
		if len(tags) > 0 {
			b, _ := json.Marshal(tags)
			want = string(b)
		}
		if e.raw != want {
			t.Errorf("%v: raw %s, json.Marshal %s", tags, e.raw, want)
		}
		if !reflect.DeepEqual(e.tags, r.NormalizeTags(tags)) {
			t.Errorf("%v: tags %+v, NormalizeTags %+v", tags, e.tags, r.NormalizeTags(tags))
		}
		// A second look-up of plain tags is served by the cache.
		e2, _, _ := c.lookup(r, sortedPairs(pairs), nil)
		if jsonPlainPairs(pairs) && e2 != e {
			t.Errorf("%v: not cached", tags)
		}
	}
}

func sortedPairs(ps []tagPair) []tagPair {
	out := slices.Clone(ps)
	slices.SortFunc(out, func(a, b tagPair) int { return strings.Compare(a.key, b.key) })
	return out
}

func jsonPlainPairs(ps []tagPair) bool {
	for _, p := range ps {
		if !jsonPlain(p.key) || !jsonPlain(p.value) {
			return false
		}
	}
	return true
}

// parseFixedReference is parseFixed without its int64 fast path.
func parseFixedReference(s string, scale, maxInt int) (*big.Int, error) {
	orig := s
	neg := strings.HasPrefix(s, "-")
	if neg {
		s = s[1:]
	}
	intPart, frac, hasDot := strings.Cut(s, ".")
	if intPart == "" || (hasDot && frac == "") || !allDigits(intPart) || !allDigits(frac) {
		return nil, fmt.Errorf("%w: %q", errNotDecimal, orig)
	}
	if len(frac) > scale {
		if strings.TrimRight(frac[scale:], "0") != "" {
			return nil, fmt.Errorf("%w: %q", errNotDecimal, orig)
		}
		frac = frac[:scale]
	}
	if t := strings.TrimLeft(intPart, "0"); len(t) > maxInt {
		return nil, fmt.Errorf("%w: %q", errNotDecimal, orig)
	}
	v, ok := new(big.Int).SetString(intPart+frac+strings.Repeat("0", scale-len(frac)), 10)
	if !ok {
		return nil, fmt.Errorf("%w: %q", errNotDecimal, orig)
	}
	if neg {
		v.Neg(v)
	}
	return v, nil
}

var fixedCases = []string{"0", "-0", "7", "12.5", "-0.25", "0.000000001", "999999999.999999999", "1000000000", "000000000000001.5",
	"123456789012345678", "12345678901234567890.123456789", "-99999999999999999999999999.1", "1.0000000000", "1.0000000001",
	"", "-", ".5", "5.", "1e3", "+1", "1.2.3", " 1", "0x10", "١"}

func checkParseFixed(t *testing.T, s string) {
	for _, scale := range []int{0, 9, 18} {
		got, gerr := parseFixed(s, scale, 27)
		want, werr := parseFixedReference(s, scale, 27)
		if (gerr == nil) != (werr == nil) || gerr == nil && got.Cmp(want) != 0 {
			t.Fatalf("parseFixed(%q, %d) = %v, %v; reference %v, %v", s, scale, got, gerr, want, werr)
		}
	}
}

func TestParseFixedFastPathAgrees(t *testing.T) {
	for _, s := range fixedCases {
		checkParseFixed(t, s)
	}
}

func FuzzParseFixed(f *testing.F) {
	for _, s := range fixedCases {
		f.Add(s)
	}
	f.Fuzz(checkParseFixed)
}

func TestIsTenantNameAgreesWithPattern(t *testing.T) {
	for _, s := range []string{"", "a", "acme", "a-b-1", "-a", "a-", "A", "acme corp", "tenant_1", "é",
		strings.Repeat("a", 63), strings.Repeat("a", 64), "a\n", "9", "a.b"} {
		if got, want := isTenantName(s), auth.TenantPattern.MatchString(s); got != want {
			t.Errorf("isTenantName(%q) = %v, TenantPattern says %v", s, got, want)
		}
	}
}

func FuzzIsTenantName(f *testing.F) {
	f.Add("acme")
	f.Add("-x")
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := isTenantName(s), auth.TenantPattern.MatchString(s); got != want {
			t.Fatalf("isTenantName(%q) = %v, TenantPattern says %v", s, got, want)
		}
	})
}

// formatFixedReference is formatFixed without its int64 fast path.
func formatFixedReference(v *big.Int, scale int) string {
	neg := v.Sign() < 0
	digits := new(big.Int).Abs(v).String()
	if len(digits) <= scale {
		digits = strings.Repeat("0", scale-len(digits)+1) + digits
	}
	intPart, frac := digits[:len(digits)-scale], strings.TrimRight(digits[len(digits)-scale:], "0")
	out := intPart
	if frac != "" {
		out += "." + frac
	}
	if neg && out != "0" {
		out = "-" + out
	}
	return out
}

func TestFormatFixedFastPathAgrees(t *testing.T) {
	vals := []int64{0, 1, -1, 9, 10, 250000000, -250000000, 1000000000, 123456789012345678, -999999999, 1 << 62, -(1 << 62), -9223372036854775808, 9223372036854775807}
	for _, n := range vals {
		for _, scale := range []int{0, 1, 9, 18, 27} {
			v := big.NewInt(n)
			if got, want := formatFixed(v, scale), formatFixedReference(v, scale); got != want {
				t.Errorf("formatFixed(%d, %d) = %q, want %q", n, scale, got, want)
			}
		}
	}
	big1 := new(big.Int).Lsh(big.NewInt(1), 100)
	if got, want := formatFixed(big1, 9), formatFixedReference(big1, 9); got != want {
		t.Errorf("2^100: %q, want %q", got, want)
	}
}

func FuzzFormatFixed(f *testing.F) {
	f.Add(int64(1250000000), 9)
	f.Fuzz(func(t *testing.T, n int64, scale int) {
		if scale < 0 || scale > 40 {
			return
		}
		if got, want := formatFixed(big.NewInt(n), scale), formatFixedReference(big.NewInt(n), scale); got != want {
			t.Fatalf("formatFixed(%d, %d) = %q, want %q", n, scale, got, want)
		}
	})
}
