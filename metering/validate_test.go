package metering_test

import (
	"encoding/json"
	"fmt"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/companyos/companyos/metering"
)

func TestNormalizeQuantity(t *testing.T) {
	tests := []struct {
		raw     string // the JSON value of data.quantity
		want    string // "" means rejected
		errPart string // part of the error when rejected
	}{
		// JSON numbers.
		{`0`, "0", ""},
		{`12`, "12", ""},
		{`12.5`, "12.5", ""},
		{`12.500`, "12.5", ""},
		{`0.001`, "0.001", ""},
		{`-0`, "0", ""},
		{`-0.0`, "0", ""},
		{`1e3`, "1000", ""},
		{`1E3`, "1000", ""},
		{`1.5e-3`, "0.0015", ""},
		{`12.500e1`, "125", ""},
		{`125e-2`, "1.25", ""},
		{`0e9999`, "0", ""},
		{`0e99999`, "", "out of range"},
		{`1e+2`, "100", ""},
		{`99999999999999999999`, "99999999999999999999", ""},                                   // 20 integer digits
		{`0.000000000000000001`, "0.000000000000000001", ""},                                   // 18 fraction digits
		{`1.000000000000000000000000000000`, "1", ""},                                          // trailing zeros are not precision
		{`123456789012345678.123456789012345678`, "123456789012345678.123456789012345678", ""}, // 36 digits
		{`-1`, "", "negative"},
		{`-0.5`, "", "negative"},
		{`-1e3`, "", "negative"},
		{`100000000000000000000`, "", "more than 20 integer digits"},
		{`1e20`, "", "more than 20 integer digits"},
		{`1e19`, "10000000000000000000", ""},
		{`0.0000000000000000001`, "", "fraction digits"},
		{`1e-19`, "", "fraction digits"},
		{`1e99999`, "", "out of range"},
		{`1e-99999`, "", "out of range"},
		{`1.` + strings.Repeat("1", 70), "", "at most 64 characters"},
		// Decimal strings.
		{`"12.5"`, "12.5", ""},
		{`"0012.50"`, "12.5", ""},
		{`"0"`, "0", ""},
		{`"0.0"`, "0", ""},
		{`"-0"`, "0", ""},
		{`"3"`, "3", ""},
		{`"-3"`, "", "negative"},
		{`"1e3"`, "", "without exponent"},
		{`"+3"`, "", "non-negative decimal"},
		{`".5"`, "", "non-negative decimal"},
		{`"5."`, "", "non-negative decimal"},
		{`" 5"`, "", "non-negative decimal"},
		{`"5 "`, "", "non-negative decimal"},
		{`"1,5"`, "", "non-negative decimal"},
		{`"0x10"`, "", "non-negative decimal"},
		{`""`, "", "empty"},
		{`"NaN"`, "", "finite"},
		{`"Infinity"`, "", "finite"},
		{`"-Infinity"`, "", "finite"},
		{`"inf"`, "", "finite"},
		{`"12.5\u0000"`, "", "non-negative decimal"},
		// Other JSON.
		{`null`, "", "required"},
		{`true`, "", "JSON number or a decimal string"},
		{`[1]`, "", "JSON number or a decimal string"},
		{`{"v":1}`, "", "JSON number or a decimal string"},
	}
	for _, tt := range tests {
		t.Run(tt.raw, func(t *testing.T) {
			got, err := metering.NormalizeQuantity(json.RawMessage(tt.raw))
			if tt.want == "" {
				if err == nil {
					t.Fatalf("accepted as %q, want an error containing %q", got, tt.errPart)
				}
				if !strings.Contains(err.Error(), tt.errPart) {
					t.Fatalf("error %q does not contain %q", err, tt.errPart)
				}
				return
			}
			if err != nil {
				t.Fatalf("rejected: %v", err)
			}
			if got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
			if !metering.IsCanonicalQuantity(got) {
				t.Fatalf("%q is not canonical", got)
			}
			// Exactness: the same rational as the input, checked with math/big.
			in := strings.Trim(tt.raw, `"`)
			a, ok1 := new(big.Rat).SetString(in)
			b, ok2 := new(big.Rat).SetString(got)
			if !ok1 || !ok2 || a.Cmp(b) != 0 {
				t.Fatalf("%s normalised to %s: not the same value", in, got)
			}
		})
	}
}

func TestIsCanonicalQuantity(t *testing.T) {
	for s, want := range map[string]bool{"0": true, "12.5": true, "1000": true, "0.001": true,
		"12.50": false, "012": false, "1e3": false, "": false, "-1": false, ".5": false, "0.0": false} {
		if got := metering.IsCanonicalQuantity(s); got != want {
			t.Errorf("IsCanonicalQuantity(%q) = %v, want %v", s, got, want)
		}
	}
}

// TestDecodeEvent is the validator's table: every field, one way to get it
// wrong per row, and the field each error names.
func TestDecodeEvent(t *testing.T) {
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	v := metering.Validator{MaxFutureSkew: 5 * time.Minute, Now: func() time.Time { return now }}
	set := func(k string, val any) func(map[string]any) { return func(e map[string]any) { e[k] = val } }
	del := func(k string) func(map[string]any) { return func(e map[string]any) { delete(e, k) } }
	setData := func(k string, val any) func(map[string]any) {
		return func(e map[string]any) { e["data"].(map[string]any)[k] = val }
	}
	delData := func(k string) func(map[string]any) {
		return func(e map[string]any) { delete(e["data"].(map[string]any), k) }
	}
	tests := []struct {
		name   string
		edit   func(map[string]any)
		fields []string // fields named by the errors; nil = valid
	}{
		{"valid", nil, nil},
		{"valid without tags", delData("tags"), nil},
		{"valid null tags", setData("tags", nil), nil},
		{"valid with extension attributes", func(e map[string]any) { e["traceparent"] = "00-abc"; e["seq"] = 3; e["sampled"] = true }, nil},
		{"valid with dataschema", set("dataschema", "https://companyos.dev/schemas/metering.json"), nil},
		{"valid datacontenttype", set("datacontenttype", "application/json; charset=utf-8"), nil},
		{"valid time with offset and fraction", set("time", "2026-06-01T14:04:05.123456789+02:00"), nil},
		{"valid time within skew", set("time", now.Add(4*time.Minute).Format(time.RFC3339)), nil},
		{"valid quantity string", setData("quantity", "7"), nil},
		{"valid source URN", set("source", "urn:companyos:agent:7"), nil},

		{"specversion missing", del("specversion"), []string{"specversion"}},
		{"specversion 0.3", set("specversion", "0.3"), []string{"specversion"}},
		{"specversion number", set("specversion", 1.0), []string{"specversion"}},
		{"id missing", del("id"), []string{"id"}},
		{"id empty", set("id", ""), []string{"id"}},
		{"id number", set("id", 42), []string{"id"}},
		{"id too long", set("id", strings.Repeat("x", 257)), []string{"id"}},
		{"id control character", set("id", "a\nb"), []string{"id"}},
		{"source missing", del("source"), []string{"source"}},
		{"source with space", set("source", "//agents/host 1"), []string{"source"}},
		{"source bad URI", set("source", "%zz"), []string{"source"}},
		{"source too long", set("source", "/"+strings.Repeat("s", 1024)), []string{"source"}},
		{"type missing", del("type"), []string{"type"}},
		{"type one segment", set("type", "cpu"), []string{"type"}},
		{"type uppercase", set("type", "Compute.CPU"), []string{"type"}},
		{"type bad chars", set("type", "compute.cpu-seconds"), []string{"type"}},
		{"subject missing", del("subject"), []string{"subject"}},
		{"subject not a tenant", set("subject", "Acme Corp"), []string{"subject"}},
		{"time missing", del("time"), []string{"time"}},
		{"time not RFC 3339", set("time", "2026-06-01 12:00:00"), []string{"time"}},
		{"time without zone", set("time", "2026-06-01T12:00:00"), []string{"time"}},
		{"time far future", set("time", now.Add(6*time.Minute).Format(time.RFC3339)), []string{"time"}},
		{"time before 1970", set("time", "1969-12-31T23:59:59Z"), []string{"time"}},
		{"time number", set("time", 1767366245), []string{"time"}},
		{"datacontenttype xml", set("datacontenttype", "application/xml"), []string{"datacontenttype"}},
		{"data missing", del("data"), []string{"data"}},
		{"data null", set("data", nil), []string{"data"}},
		{"data string", set("data", "12"), []string{"data"}},
		{"data_base64", func(e map[string]any) { delete(e, "data"); e["data_base64"] = "AAAA" }, []string{"data_base64"}},
		{"quantity missing", delData("quantity"), []string{"data.quantity"}},
		{"quantity negative", setData("quantity", json.Number("-1")), []string{"data.quantity"}},
		{"quantity negative string", setData("quantity", "-1.5"), []string{"data.quantity"}},
		{"quantity NaN string", setData("quantity", "NaN"), []string{"data.quantity"}},
		{"quantity exponent string", setData("quantity", "1e3"), []string{"data.quantity"}},
		{"quantity huge precision", setData("quantity", "0."+strings.Repeat("1", 40)), []string{"data.quantity"}},
		{"quantity huge", setData("quantity", json.Number("1e40")), []string{"data.quantity"}},
		{"quantity bool", setData("quantity", true), []string{"data.quantity"}},
		{"unit missing", delData("unit"), []string{"data.unit"}},
		{"unit uppercase", setData("unit", "Second"), []string{"data.unit"}},
		{"unit number", setData("unit", 1), []string{"data.unit"}},
		{"data unknown member", setData("price", 3), []string{"data.price"}},
		{"tags not object", setData("tags", []string{"a"}), []string{"data.tags"}},
		{"tag value number", setData("tags", map[string]any{"region": 1}), []string{"data.tags.region"}},
		{"tag value too long", setData("tags", map[string]any{"region": strings.Repeat("r", 257)}), []string{"data.tags.region"}},
		{"tag name empty", setData("tags", map[string]any{"": "x"}), []string{"data.tags"}},
		{"tag name too long", setData("tags", map[string]any{strings.Repeat("k", 65): "x"}), []string{fmt.Sprintf("data.tags.%.64q", strings.Repeat("k", 65))}},
		{"too many tags", setData("tags", func() map[string]any {
			m := map[string]any{}
			for i := range 33 {
				m[strings.Repeat("t", i+1)] = "v"
			}
			return m
		}()), []string{"data.tags"}},
		{"unknown attribute", set("Tenant", "acme"), []string{"Tenant"}},
		{"case-different attribute", func(e map[string]any) { delete(e, "id"); e["ID"] = "x" }, []string{"ID", "id"}},
		{"extension object", set("ext", map[string]any{"a": 1}), []string{"ext"}},
		{"null subject is absent", set("subject", nil), []string{"subject"}},
		{"null extension", set("ext", nil), nil},
		{"several at once", func(e map[string]any) {
			e["specversion"] = "2"
			delete(e, "id")
			e["data"].(map[string]any)["quantity"] = "-1"
		},
			[]string{"specversion", "id", "data.quantity"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw := mustJSON(t, ev("evt-1", tt.edit))
			e, err := v.Decode(raw)
			if tt.fields == nil {
				if err != nil {
					t.Fatalf("rejected: %v", err)
				}
				if err := e.Validate(); err != nil {
					t.Fatalf("decoded event does not validate: %v", err)
				}
				return
			}
			var ve *metering.ValidationError
			if err == nil || !asValidation(err, &ve) {
				t.Fatalf("err = %v, want a *ValidationError", err)
			}
			var got []string
			for _, fe := range ve.Errors {
				got = append(got, fe.Field)
				if fe.Detail == "" {
					t.Errorf("%s: empty detail", fe.Field)
				}
			}
			for _, f := range tt.fields {
				found := false
				for _, g := range got {
					found = found || g == f
				}
				if !found {
					t.Errorf("errors name %v, want %q among them (%v)", got, f, err)
				}
			}
			if len(got) != len(tt.fields) {
				t.Errorf("errors name %v, want exactly %v", got, tt.fields)
			}
		})
	}
}

func asValidation(err error, target **metering.ValidationError) bool {
	ve, ok := err.(*metering.ValidationError)
	*target = ve
	return ok
}

func TestDecodeEventNormalises(t *testing.T) {
	raw := `{"specversion":"1.0","id":"e1","source":"//a","type":"compute.cpu_seconds","subject":"acme",
		"time":"2026-01-02T16:04:05.5+01:00","datacontenttype":"application/json; charset=utf-8",
		"data":{"quantity":1.50e2,"unit":"second","tags":{}}}`
	e, err := metering.DecodeEvent([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	want := metering.Event{SpecVersion: "1.0", ID: "e1", Source: "//a", Type: "compute.cpu_seconds", Subject: "acme",
		Time: time.Date(2026, 1, 2, 15, 4, 5, 5e8, time.UTC), DataContentType: "application/json",
		Data: metering.Data{Quantity: "150", Unit: "second"}}
	if e.Time.Location() != time.UTC || !e.Time.Equal(want.Time) {
		t.Fatalf("time %v, want %v in UTC", e.Time, want.Time)
	}
	e.Time = want.Time
	if mustString(t, e) != mustString(t, want) {
		t.Fatalf("got %+v\nwant %+v", e, want)
	}
}

func TestDecodeEventMalformed(t *testing.T) {
	valid := string(mustJSON(t, ev("m", nil)))
	for _, raw := range []string{``, `{`, `[]`, `null`, `"event"`, `{"id":"a",}`, strings.Repeat(" ", metering.MaxEventBytes+1),
		valid + `{}`, valid + `x`, valid + "\x00", "\x00", `{"id":"a" "b":1}`, `{"id":"\x"}`, `{"id":"\u12"}`, "{\"id\":\"a\tb\"}", `{"a":01}`, `{"a":1.}`,
		`{"a":-}`, `{"a":tru}`, `{"a":[1,]}`, `{"a":` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `}`, `{1:2}`} {
		_, err := metering.DecodeEvent([]byte(raw))
		var ve *metering.ValidationError
		if !asValidation(err, &ve) || !ve.Malformed || ve.Errors[0].Field != "body" {
			t.Errorf("%.20q: err = %v, want a malformed body error", raw, err)
		}
	}
}

func mustString(t *testing.T, v any) string { return string(mustJSON(t, v)) }

// FuzzDecodeEvent: the decoder never panics; what it accepts validates, has
// a canonical quantity equal (as a rational) to the one sent, and decodes to
// the same event again from its stored JSON.
func FuzzDecodeEvent(f *testing.F) {
	f.Add([]byte(`{"specversion":"1.0","id":"e1","source":"//a","type":"compute.cpu_seconds","subject":"acme","time":"2026-01-02T15:04:05Z","data":{"quantity":"12.50","unit":"second","tags":{"service":"api"}}}`))
	f.Add([]byte(`{"specversion":"1.0","id":"e1","source":"//a","type":"compute.cpu_seconds","subject":"acme","time":"2026-01-02T15:04:05Z","data":{"quantity":1.5e-3,"unit":"second"}}`))
	f.Add([]byte(`{"specversion":"1.0","id":"\u00e9","source":"urn:x","type":"a.b","subject":"t","time":"2026-01-02T15:04:05.1-07:00","data":{"quantity":-0,"unit":"s"},"ext":1}`))
	f.Add([]byte(`{"data":{"quantity":"NaN"}}`))
	f.Add([]byte(`[{"id":1}]`))
	f.Add([]byte(`{"id":"a","id":"b"}`))
	v := metering.Validator{Now: func() time.Time { return time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC) }}
	f.Fuzz(func(t *testing.T, raw []byte) {
		e, err := v.Decode(raw)
		if err == nil && !json.Valid(raw) {
			t.Fatalf("accepted invalid JSON %q", raw)
		}
		if err != nil {
			var ve *metering.ValidationError
			if !asValidation(err, &ve) || len(ve.Errors) == 0 {
				t.Fatalf("error %v is not a non-empty *ValidationError", err)
			}
			return
		}
		if err := e.Validate(); err != nil {
			t.Fatalf("accepted event does not validate: %v", err)
		}
		var m struct {
			Data struct {
				Quantity json.RawMessage `json:"quantity"`
			} `json:"data"`
		}
		if err := json.Unmarshal(raw, &m); err == nil {
			in := string(m.Data.Quantity)
			if strings.HasPrefix(in, `"`) {
				_ = json.Unmarshal(m.Data.Quantity, &in)
			}
			a, ok1 := new(big.Rat).SetString(in)
			b, ok2 := new(big.Rat).SetString(e.Data.Quantity)
			if ok1 && ok2 && a.Cmp(b) != 0 {
				t.Fatalf("quantity %s stored as %s", in, e.Data.Quantity)
			}
		}
		if !json.Valid(raw) {
			t.Fatalf("accepted invalid JSON %q", raw)
		}
		stored, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		if rec := metering.Record(e); string(rec.Value) != string(stored) {
			t.Fatalf("record value differs from encoding/json:\n%s\n%s", rec.Value, stored)
		}
		again, err := v.Decode(stored)
		if err != nil {
			t.Fatalf("stored form %s does not decode: %v", stored, err)
		}
		if s2, _ := json.Marshal(again); string(s2) != string(stored) {
			t.Fatalf("not a fixed point:\n%s\n%s", stored, s2)
		}
	})
}

func TestDecodeEventStrictJSON(t *testing.T) {
	base := `"specversion":"1.0","source":"//a","type":"compute.cpu_seconds","subject":"acme","time":"2026-01-02T15:04:05Z","data":{"quantity":1,"unit":"second"}`
	for _, tc := range []struct {
		raw    string
		fields []string
	}{
		{`{"id":"a","id":"b",` + base + `}`, []string{"id"}},
		{`{"id":"a",` + base + `,"data":{"quantity":2,"unit":"second"}}`, []string{"data"}},
		{`{"id":"a","ext":1,"ext":2,` + base + `}`, []string{"ext"}},
		{`{"id":"a",` + strings.Replace(base, `"quantity":1`, `"quantity":1,"quantity":2`, 1) + `}`, []string{"data.quantity"}},
		{`{"id":"a",` + strings.Replace(base, `"unit":"second"`, `"unit":"second","tags":{"k":"v","k":"w"}`, 1) + `}`, []string{"data.tags.k"}},
	} {
		_, err := metering.DecodeEvent([]byte(tc.raw))
		var ve *metering.ValidationError
		if !asValidation(err, &ve) || len(ve.Errors) != len(tc.fields) || ve.Errors[0].Field != tc.fields[0] {
			t.Errorf("%s: %v, want errors on %v", tc.raw, err, tc.fields)
		}
	}
	// Escapes decode as encoding/json decodes them, and the record encodes
	// as encoding/json encodes.
	raw := `{"specversion":"1.0","id":"\u00e9\ud83d\ude00\ud800x\"<&>\u2028","source":"//a\/b","type":"compute.cpu_seconds",` +
		`"subject":"acme","time":"2026-01-02T15:04:05Z","data":{"quantity":1,"unit":"second","tags":{"team":"r&d <core>"}}}`
	e, err := metering.DecodeEvent([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	var want struct{ ID, Source string }
	if err := json.Unmarshal([]byte(raw), &want); err != nil {
		t.Fatal(err)
	}
	if e.ID != want.ID || e.Source != want.Source {
		t.Fatalf("id %q source %q, want %q %q", e.ID, e.Source, want.ID, want.Source)
	}
	stored, _ := json.Marshal(e)
	if v := metering.Record(e).Value; string(v) != string(stored) {
		t.Fatalf("record %s\nwant   %s", v, stored)
	}
}
