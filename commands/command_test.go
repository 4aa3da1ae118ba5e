package commands

import (
	"strings"
	"testing"
)

func TestDecodeCommand(t *testing.T) {
	cases := []struct {
		name  string
		body  string
		field string // first error field; "" = valid
	}{
		{"valid create", `{"tenant":"pilot-1","type":"entity.create","payload":{"id":"svc:A","kind":"service","attrs":{"region":"us","n":3,"tags":["a","b"],"on":true}}}`, ""},
		{"valid link", `{"tenant":"pilot-1","type":"relation.link","payload":{"from":"svc:A","rel":"depends_on","to":"db:orders"}}`, ""},
		{"malformed json", `{"tenant":`, "body"},
		{"valid price", `{"tenant":"fin","type":"pricing.set","payload":{"meter":"compute.cpu_seconds","unit":"second","region":"*","currency":"USD","unit_price":"0.000012","effective_from":"2026-01-01T00:00:00Z"}}`, ""},
		{"price as float", `{"tenant":"fin","type":"pricing.set","payload":{"meter":"compute.cpu_seconds","unit":"second","region":"*","currency":"USD","unit_price":1.5,"effective_from":"2026-01-01T00:00:00Z"}}`, "payload.unit_price"},
		{"price exponent", `{"tenant":"fin","type":"pricing.set","payload":{"meter":"compute.cpu_seconds","unit":"second","region":"*","currency":"USD","unit_price":"1e-6","effective_from":"2026-01-01T00:00:00Z"}}`, "payload.unit_price"},
		{"price negative", `{"tenant":"fin","type":"pricing.set","payload":{"meter":"compute.cpu_seconds","unit":"second","region":"*","currency":"USD","unit_price":"-1","effective_from":"2026-01-01T00:00:00Z"}}`, "payload.unit_price"},
		{"price currency", `{"tenant":"fin","type":"pricing.set","payload":{"meter":"compute.cpu_seconds","unit":"second","region":"*","currency":"usd","unit_price":"1","effective_from":"2026-01-01T00:00:00Z"}}`, "payload.currency"},
		{"price date", `{"tenant":"fin","type":"pricing.set","payload":{"meter":"compute.cpu_seconds","unit":"second","region":"*","currency":"USD","unit_price":"1","effective_from":"yesterday"}}`, "payload.effective_from"},
		{"price tenant", `{"tenant":"fin","type":"pricing.set","payload":{"meter":"compute.cpu_seconds","unit":"second","region":"eu-west-1","currency":"USD","unit_price":"1","effective_from":"2026-01-01T00:00:00Z","applies_to_tenant":"Bad Tenant"}}`, "payload.applies_to_tenant"},
		{"valid approval", `{"tenant":"t","type":"approval.grant","justification":"CHG-1","payload":{"action":"entity.delete","resource":"dataset:prod","requester":"user:alice"}}`, ""},
		{"approval unknown action", `{"tenant":"t","type":"approval.grant","payload":{"action":"nuke","resource":"dataset:prod","requester":"user:alice"}}`, "payload.action"},
		{"approval bad requester", `{"tenant":"t","type":"approval.grant","payload":{"action":"entity.delete","resource":"dataset:prod","requester":"alice"}}`, "payload.requester"},
		{"bundle without files", `{"tenant":"t","type":"policy.bundle.publish","payload":{"files":{}}}`, "payload.files"},
		{"bundle path escape", `{"tenant":"t","type":"policy.bundle.publish","payload":{"files":{"VERSION":"1.0.0","../x.rego":"package x"}}}`, "payload.files.../x.rego"},
		{"selective not an attr", `{"tenant":"t","type":"entity.create","payload":{"id":"user:a","kind":"user","attrs":{"email":"a@b"},"selective":["phone"]}}`, "payload.selective[0]"},
		{"selective removal", `{"tenant":"t","type":"entity.update","payload":{"id":"user:a","attrs":{"email":null},"selective":["email"]}}`, "payload.selective[0]"},
		{"trailing data", `{"tenant":"t","type":"entity.delete","payload":{"id":"svc:A"}} {}`, "body"},
		{"unknown top-level field", `{"tenant":"t","type":"entity.delete","payload":{"id":"svc:A"},"extra":1}`, "extra"},
		{"unknown payload field", `{"tenant":"t","type":"entity.delete","payload":{"id":"svc:A","force":true}}`, "payload.force"},
		{"missing tenant", `{"type":"entity.delete","payload":{"id":"svc:A"}}`, "tenant"},
		{"bad tenant", `{"tenant":"Pilot_1","type":"entity.delete","payload":{"id":"svc:A"}}`, "tenant"},
		{"missing type", `{"tenant":"t","payload":{"id":"svc:A"}}`, "type"},
		{"unknown type", `{"tenant":"t","type":"entity.explode","payload":{}}`, "type"},
		{"missing payload", `{"tenant":"t","type":"entity.delete"}`, "payload"},
		{"null payload", `{"tenant":"t","type":"entity.delete","payload":null}`, "payload"},
		{"bad id", `{"tenant":"t","type":"entity.delete","payload":{"id":"no-colon"}}`, "payload.id"},
		{"wildcard id", `{"tenant":"t","type":"entity.delete","payload":{"id":"svc:*"}}`, "payload.id"},
		{"missing kind", `{"tenant":"t","type":"entity.create","payload":{"id":"svc:A"}}`, "payload.kind"},
		{"wrong type for kind", `{"tenant":"t","type":"entity.create","payload":{"id":"svc:A","kind":7}}`, "payload.kind"},
		{"nested attr value", `{"tenant":"t","type":"entity.create","payload":{"id":"svc:A","kind":"service","attrs":{"o":{"x":1}}}}`, "payload.attrs.o"},
		{"null attr on create", `{"tenant":"t","type":"entity.create","payload":{"id":"svc:A","kind":"service","attrs":{"o":null}}}`, "payload.attrs.o"},
		{"bad attr name", `{"tenant":"t","type":"entity.create","payload":{"id":"svc:A","kind":"service","attrs":{"Bad Name":1}}}`, "payload.attrs.Bad Name"},
		{"empty patch", `{"tenant":"t","type":"entity.update","payload":{"id":"svc:A","attrs":{}}}`, "payload.attrs"},
		{"bad rel", `{"tenant":"t","type":"relation.link","payload":{"from":"svc:A","rel":"Depends On","to":"db:x"}}`, "payload.rel"},
		{"expected_version on relation", `{"tenant":"t","type":"relation.link","expected_version":1,"payload":{"from":"svc:A","rel":"r","to":"db:x"}}`, "expected_version"},
		{"negative expected_version", `{"tenant":"t","type":"entity.delete","expected_version":-1,"payload":{"id":"svc:A"}}`, "expected_version"},
		{"long string", `{"tenant":"t","type":"entity.create","payload":{"id":"svc:A","kind":"service","attrs":{"s":"` + strings.Repeat("x", MaxStringLen+1) + `"}}}`, "payload.attrs.s"},
		{"invalid utf8", "{\"tenant\":\"t\xff\"}", "body"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeCommand([]byte(tc.body))
			if tc.field == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			ve, ok := err.(*ValidationError)
			if !ok {
				t.Fatalf("error = %v (%T), want *ValidationError", err, err)
			}
			if ve.Errors[0].Field != tc.field {
				t.Fatalf("field = %q (%s), want %q", ve.Errors[0].Field, ve.Errors[0].Detail, tc.field)
			}
		})
	}
}

func TestCommandIDs(t *testing.T) {
	a := CommandIDFor("t1", "user:a", "k")
	if a != CommandIDFor("t1", "user:a", "k") {
		t.Fatal("not deterministic")
	}
	for _, other := range []string{CommandIDFor("t2", "user:a", "k"), CommandIDFor("t1", "user:b", "k"), CommandIDFor("t1", "user:a", "k2")} {
		if other == a {
			t.Fatal("idempotency scope leaks across tenant/principal/key")
		}
	}
	if RandomID("cmd_") == RandomID("cmd_") {
		t.Fatal("random ids collide")
	}
	if !receiptIDRe.MatchString(ReceiptIDFor(a)) {
		t.Fatal("receipt id format")
	}
}

// FuzzDecodeCommand: the decoder never panics, and whatever it accepts
// re-validates and re-encodes to something it accepts again.
func FuzzDecodeCommand(f *testing.F) {
	for _, s := range []string{
		`{"tenant":"pilot-1","type":"entity.create","expected_version":0,"payload":{"id":"svc:A","kind":"service","attrs":{"region":"us"}}}`,
		`{"tenant":"t","type":"entity.update","payload":{"id":"svc:A","attrs":{"a":null,"b":[1,"x",true]}}}`,
		`{"tenant":"t","type":"relation.unlink","payload":{"from":"svc:A","rel":"r","to":"db:x"}}`,
		`{"tenant":"t","type":"entity.delete","payload":{"id":"svc:A","cascade":true}}`,
		`{}`, `[]`, `null`, `{"payload":{"id":1}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		c, err := DecodeCommand(body)
		if err != nil {
			if _, ok := err.(*ValidationError); !ok {
				t.Fatalf("non-validation error %T: %v", err, err)
			}
			return
		}
		if _, err := c.Validate(); err != nil {
			t.Fatalf("accepted command fails Validate: %v", err)
		}
	})
}
