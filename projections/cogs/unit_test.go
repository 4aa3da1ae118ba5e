package cogs

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"strings"
	"testing"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/ThreeDotsLabs/watermill/message"
)

func TestParseFixed(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string // formatFixed of the result, "" = error
	}{
		{"12.5", "12.5"}, {"0", "0"}, {"-0.25", "-0.25"}, {"007.100", "7.1"}, {"1.123456789", "1.123456789"},
		{"1.1234567890", "1.123456789"}, // trailing zeros beyond the scale are exact
		{"1.1234567891", ""}, {"1e3", ""}, {".5", ""}, {"5.", ""}, {"+1", ""}, {"", ""}, {" 1", ""}, {"1,5", ""}, {"NaN", ""},
		{strings.Repeat("9", 27), strings.Repeat("9", 27)}, {strings.Repeat("9", 28), ""},
	} {
		v, err := parseFixed(tc.in, QuantityScale, maxQuantityIntDigits)
		switch {
		case tc.want == "" && err == nil:
			t.Errorf("parseFixed(%q) = %s, want an error", tc.in, formatFixed(v, QuantityScale))
		case tc.want != "" && err != nil:
			t.Errorf("parseFixed(%q): %v", tc.in, err)
		case tc.want != "" && formatFixed(v, QuantityScale) != tc.want:
			t.Errorf("parseFixed(%q) = %s, want %s", tc.in, formatFixed(v, QuantityScale), tc.want)
		}
	}
}

func TestRatString(t *testing.T) {
	for _, tc := range []struct{ num, den int64 }{{1, 8}, {-3, 4}, {0, 1}, {12345, 100}, {1, 3}} {
		r := big.NewRat(tc.num, tc.den)
		got := RatString(r)
		back, ok := new(big.Rat).SetString(got)
		if tc.den == 3 {
			if !strings.HasPrefix(got, "0.3333") {
				t.Errorf("RatString(1/3) = %s", got)
			}
			continue
		}
		if !ok || back.Cmp(r) != 0 {
			t.Errorf("RatString(%v) = %s, not exact", r, got)
		}
	}
}

func TestRules(t *testing.T) {
	r, err := DefaultRules()
	if err != nil {
		t.Fatal(err)
	}
	tags := r.NormalizeTags(map[string]string{"SVC": " Api-Svc ", "zone": "EUW1", "team": "  ", "Squad": "Core", "env": "PRD"})
	if got := fmt.Sprintln(tags.Service, tags.Region, tags.Team, tags.Keys, tags.Values); got != "api eu-west-1 core [env region service team] [prod eu-west-1 api core]\n" {
		t.Errorf("normalised = %s", got)
	}
	// The canonical spelling wins over an alias; missing keys take defaults.
	tags = r.NormalizeTags(map[string]string{"app": "a", "service": "b", "srv": "c"})
	if tags.Service != "b" || tags.Region != "global" || tags.Team != "unowned" {
		t.Errorf("collision/defaults = %+v", tags)
	}
	if tags := r.NormalizeTags(nil); tags.Service != Unattributed {
		t.Errorf("no tags: service %q", tags.Service)
	}
	if u, ok := r.Unit("COMPUTE.cpu_seconds", " Secs "); !ok || u != "second" {
		t.Errorf("Unit = %q %v", u, ok)
	}
	if _, ok := r.Unit("compute.cpu_seconds", "hour"); ok {
		t.Error("hour accepted for cpu seconds")
	}
	if _, err := ParseRules([]byte("keys:\n  aliasez: {}\nmeters: {m: {unit: u}}\n")); err == nil {
		t.Error("a misspelt field was accepted")
	}
	if _, err := ParseRules([]byte("defaults: {service: x}\nmeters: {m: {unit: u}}\n")); err == nil {
		t.Error("a service default was accepted")
	}
	if _, err := ParseRules([]byte("keys: {aliases: {svc: service}}\n")); err == nil {
		t.Error("rules without meters were accepted")
	}
}

func TestParseEventReasons(t *testing.T) {
	r, _ := DefaultRules()
	for _, tc := range []struct {
		value, reason string
	}{
		{`not json`, ReasonBadJSON},
		{`{"specversion":"0.3","id":"a","source":"s","type":"compute.cpu_seconds","time":"2026-01-01T00:00:00Z","data":{"quantity":"1","unit":"s"}}`, ReasonInvalidEvent},
		{`{"specversion":"1.0","source":"s","type":"compute.cpu_seconds","time":"2026-01-01T00:00:00Z","data":{"quantity":"1","unit":"s"}}`, ReasonInvalidEvent},
		{`{"specversion":"1.0","id":"a","source":"s","type":"compute.cpu_seconds","time":"1969-12-31T23:59:59Z","data":{"quantity":"1","unit":"s"}}`, ReasonInvalidEvent},
		{`{"specversion":"1.0","id":"a","source":"s","type":"compute.cpu_seconds","time":"2026-01-01T00:00:00Z","data":{"quantity":1,"unit":"s"}}`, ReasonBadJSON},
		{`{"specversion":"1.0","id":"a","source":"s","type":"compute.cpu_seconds","time":"2026-01-01T00:00:00Z","data":{"quantity":"1.5.2","unit":"s"}}`, ReasonInvalidDecimal},
		{`{"specversion":"1.0","id":"a","source":"s","type":"x","time":"2026-01-01T00:00:00Z","data":{"quantity":"1","unit":"s"}}`, ReasonUnknownMeter},
		{`{"specversion":"1.0","id":"a","source":"s","type":"compute.cpu_seconds","time":"2026-01-01T00:00:00Z","data":{"quantity":"1","unit":"ms"}}`, ReasonUnknownUnit},
		{`{"specversion":"1.0","id":"a","source":"s","type":"compute.cpu_seconds","time":"2026-01-01T00:00:00Z","data":{"quantity":"1","unit":"s","tags":{"a":1}}}`, ReasonBadJSON},
		{`{"specversion":"1.0","id":"a","source":"s","type":"compute.cpu_seconds","subject":"acme","time":"2026-01-01T00:00:00.5+02:00","data":{"quantity":"1","unit":"s"}}`, ""},
	} {
		row, err := parseEvent(r, []byte(tc.value), nil, position{})
		if got := reasonOf(err); got != tc.reason {
			t.Errorf("%s: reason %q (%v), want %q", tc.value, got, err, tc.reason)
		}
		if tc.reason != "" && !errors.Is(err, errPoison) {
			t.Errorf("%s: %v is not a poison error", tc.value, err)
		}
		if tc.reason == "" && (row.hour.Format("2006-01-02T15") != "2025-12-31T22" || row.nanos != 5e8 || row.key.tenant != "acme") {
			t.Errorf("parsed %+v", row)
		}
	}
}

func TestValidatePriceSet(t *testing.T) {
	r, _ := DefaultRules()
	ok := PriceSet{Meter: "compute.cpu_seconds", Unit: "second", Region: "*", Currency: "USD", UnitPrice: "0.000012", EffectiveFrom: "2026-01-01T00:00:00Z"}
	if err := ValidatePriceSet(r, ok); err != nil {
		t.Fatal(err)
	}
	for name, mutate := range map[string]func(*PriceSet){
		"mid-hour":       func(p *PriceSet) { p.EffectiveFrom = "2026-01-01T00:30:00Z" },
		"not rfc3339":    func(p *PriceSet) { p.EffectiveFrom = "2026-01-01" },
		"negative":       func(p *PriceSet) { p.UnitPrice = "-1" },
		"19 places":      func(p *PriceSet) { p.UnitPrice = "0.0000000000000000001" },
		"float":          func(p *PriceSet) { p.UnitPrice = "1.2e-5" },
		"currency":       func(p *PriceSet) { p.Currency = "US$" },
		"wrong unit":     func(p *PriceSet) { p.Unit = "hour" },
		"bad tenant":     func(p *PriceSet) { p.AppliesToTenant = "Not a tenant" },
		"missing meter":  func(p *PriceSet) { p.Meter = "" },
		"before 1970":    func(p *PriceSet) { p.EffectiveFrom = "1969-01-01T00:00:00Z" },
		"missing unit":   func(p *PriceSet) { p.Meter, p.Unit = "new.meter", "" },
		"missing amount": func(p *PriceSet) { p.UnitPrice = "" },
	} {
		p := ok
		mutate(&p)
		if err := ValidatePriceSet(r, p); err == nil {
			t.Errorf("%s: accepted %+v", name, p)
		}
	}
	// An offset time on a whole hour is fine; unknown meters may be priced
	// ahead of their first event.
	p := ok
	p.EffectiveFrom, p.Meter, p.Unit = "2026-01-01T02:00:00+02:00", "gpu.seconds", "Second"
	if err := ValidatePriceSet(r, p); err != nil {
		t.Error(err)
	}
}

func TestSplitStatements(t *testing.T) {
	got := SplitStatements("-- a; comment\nCREATE TABLE a (x UInt8) -- trailing\nENGINE = Log;\n\n-- b\nCREATE VIEW b AS SELECT 1;\nSELECT 2")
	want := []string{"CREATE TABLE a (x UInt8) -- trailing\nENGINE = Log", "CREATE VIEW b AS SELECT 1", "SELECT 2"}
	if fmt.Sprintf("%q", got) != fmt.Sprintf("%q", want) {
		t.Errorf("got %q", got)
	}
}

func TestGuardSendsRepeatedPanicsToTheDLQ(t *testing.T) {
	p, err := NewProjector(Config{Brokers: []string{"127.0.0.1:1"}, Conn: nilConn{}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	h := p.guard(func(*message.Message) ([]*message.Message, error) { panic("boom") })
	msg := message.NewMessage("m1", []byte("x"))
	for i := 1; i <= panicAttempts; i++ {
		_, err := h(msg)
		if poisoned := errors.Is(err, errPoison); poisoned != (i == panicAttempts) || err == nil {
			t.Fatalf("attempt %d: %v", i, err)
		}
	}
	if msg.Metadata.Get(HeaderReason) != ReasonPanic || msg.Metadata.Get(HeaderAttempt) != "1" || msg.Metadata.Get(HeaderSourceOffset) != "0" {
		t.Errorf("DLQ headers = %v", msg.Metadata)
	}
	if len(p.attempts) != 0 {
		t.Errorf("attempts not cleared: %v", p.attempts)
	}
}

func TestConfigValidate(t *testing.T) {
	err := Config{BatchSize: 10, MaxBuffered: 5}.Validate()
	for _, want := range []string{"brokers required", "ClickHouse connection required", "max buffered"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want it to mention %q", err, want)
		}
	}
}

// nilConn satisfies driver.Conn for tests that never reach ClickHouse.
type nilConn struct{ driver.Conn }
