package metering

import (
	"encoding/json"
	"errors"
	"strconv"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/companyos/companyos/auth"
)

// The hand-written matchers agree with the published patterns.
func FuzzNamePatterns(f *testing.F) {
	for _, s := range []string{"compute.cpu_seconds", "a.b", "a.b.c.d.e", "a.b.c.d.e.f", "a..b", "a.", ".a", "A.b", "a.1b", "a_.b_",
		"second", "gib_hour", "x", "", "-a", "a-", "acme", "pilot-1", "0", "é.b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := isMeter(s), len(s) <= MaxMeterChars && MeterPattern.MatchString(s); got != want {
			t.Fatalf("isMeter(%q) = %v, pattern says %v", s, got, want)
		}
		if got, want := isUnit(s), UnitPattern.MatchString(s); got != want {
			t.Fatalf("isUnit(%q) = %v, pattern says %v", s, got, want)
		}
		if got, want := isTenant(s), auth.TenantPattern.MatchString(s); got != want {
			t.Fatalf("isTenant(%q) = %v, pattern says %v", s, got, want)
		}
	})
}

func TestRecentKeys(t *testing.T) {
	c := newRecentKeys(1000, time.Minute)
	h := newKeyHasher()
	now := time.Unix(1_800_000_000, 0)
	e := Event{Subject: "acme", Source: "//a", ID: "1"}
	if c.contains(h.sum(e), now) {
		t.Fatal("empty cache contains a key")
	}
	c.add(h.sum(e), now)
	if !c.contains(h.sum(e), now.Add(59*time.Second)) {
		t.Fatal("key forgotten within the ttl")
	}
	if c.contains(h.sum(e), now.Add(61*time.Second)) {
		t.Fatal("key remembered past the ttl")
	}
	for _, other := range []Event{{Subject: "globex", Source: "//a", ID: "1"}, {Subject: "acme", Source: "//a\x001", ID: ""}, {Subject: "acme", Source: "//b", ID: "1"}} {
		if c.contains(h.sum(other), now) {
			t.Fatalf("%+v collides with %+v", other, e)
		}
	}
	// Bounded: after many more keys than slots, most early ones are gone and
	// the table did not grow.
	size := len(c.slots)
	for i := range 100_000 {
		c.add(h.sum(Event{Subject: "acme", Source: "//a", ID: strconv.Itoa(i)}), now)
	}
	kept := 0
	for i := range 100_000 {
		if c.contains(h.sum(Event{Subject: "acme", Source: "//a", ID: strconv.Itoa(i)}), now) {
			kept++
		}
	}
	if len(c.slots) != size || kept > size {
		t.Fatalf("kept %d keys in %d slots", kept, size)
	}
	// The most recent keys are kept.
	if !c.contains(h.sum(Event{Subject: "acme", Source: "//a", ID: "99999"}), now) {
		t.Fatal("latest key evicted")
	}
	var nilCache *recentKeys
	nilCache.add(h.sum(e), now)
	if nilCache.contains(h.sum(e), now) {
		t.Fatal("a disabled cache remembers")
	}
}

// The scanner accepts exactly the JSON encoding/json accepts (up to its
// nesting bound).
func FuzzScannerValid(f *testing.F) {
	for _, s := range []string{`{}`, `[]`, `[1,"a",{"b":null}]`, `{"a":1,}`, `"\ud800"`, `1e5`, `-0.0E-0`, `01`, `[`, `tru`, "\"\x01\"", `"\u00zz"`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		s := &scanner{buf: raw}
		err := s.skip(0)
		ok := err == nil && s.atEnd()
		if want := json.Valid(raw); ok != want {
			var se *syntaxError
			if !ok && errors.As(err, &se) && se.msg == "nested too deeply" {
				return
			}
			t.Fatalf("scanner says %v (%v), encoding/json says %v for %q", ok, err, want, raw)
		}
		// Strings decode as encoding/json decodes them.
		if ok && len(raw) > 0 && raw[0] == '"' {
			got, err := (&scanner{buf: raw}).str()
			var want string
			if jerr := json.Unmarshal(raw, &want); err != nil || jerr != nil || got != want && utf8.ValidString(got) {
				t.Fatalf("str(%q) = %q, %v; encoding/json %q, %v", raw, got, err, want, jerr)
			}
		}
	})
}
