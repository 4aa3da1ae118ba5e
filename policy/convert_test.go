package policy

import (
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
)

// The hand-built input document must be exactly what encoding/json would
// produce from the struct tags, so that the tags stay the documentation.
func TestInputValueMatchesJSON(t *testing.T) {
	inputs := []Input{
		{
			Action: "relation.link", Tenant: "acme", Relation: "owns",
			Principal: Principal{ID: "user:a", Kind: "user", Roles: []string{"editor", "admin"}, Attrs: map[string]any{"region": "eu", "level": 3, "tags": []any{"x", 1.5, nil, true}, "nested": map[string]any{"k": "v"}}, MFA: true, Exists: true},
			Resource:  Resource{ID: "doc:1", Kind: "document", Attrs: map[string]any{"region": "us"}, Exists: true},
			Target:    &Resource{ID: "doc:2", Attrs: map[string]any{}},
		},
		{
			Action:    "entity.create",
			Principal: Principal{ID: "user:b", Roles: []string{}, Attrs: map[string]any{}},
			Resource:  Resource{ID: "doc:3", Attrs: map[string]any{}},
		},
	}
	for i, in := range inputs {
		got, err := inputValue(&in)
		if err != nil {
			t.Fatal(err)
		}
		want, err := ast.InterfaceToValue(in) // JSON round trip through the tags
		if err != nil {
			t.Fatal(err)
		}
		if got.Compare(want) != 0 {
			t.Errorf("input %d:\n got  %v\n want %v", i, got, want)
		}
	}
}

func TestInputValueNilCollections(t *testing.T) {
	got, err := inputValue(&Input{})
	if err != nil {
		t.Fatal(err)
	}
	want := ast.MustParseTerm(`{"action": "", "tenant": "",
		"principal": {"id": "", "roles": [], "attrs": {}, "mfa": false, "mfa_age_seconds": 0, "exists": false},
		"resource": {"id": "", "attrs": {}, "exists": false}}`).Value
	if got.Compare(want) != 0 {
		t.Errorf("got  %v\nwant %v", got, want)
	}
}

func TestInputValueRejectsUnencodableAttrs(t *testing.T) {
	_, err := inputValue(&Input{Resource: Resource{Attrs: map[string]any{"ch": make(chan int)}}})
	if err == nil {
		t.Fatal("want error for a channel attribute")
	}
}
