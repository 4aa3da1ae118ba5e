package events

import (
	"encoding/json"
	"slices"
	"testing"

	"github.com/companyos/companyos/schemas"
)

// The documented schema and the Go type agree on the set of fields.
func TestReceiptMatchesSchema(t *testing.T) {
	var schema struct {
		Required   []string                   `json:"required"`
		Properties map[string]json.RawMessage `json:"properties"`
	}
	if err := json.Unmarshal(schemas.ReceiptSchema, &schema); err != nil {
		t.Fatal(err)
	}
	payload, err := MarshalReceipt(sampleReceipt(1, GenesisHash))
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]json.RawMessage
	if err := json.Unmarshal(payload, &got); err != nil {
		t.Fatal(err)
	}
	for _, f := range schema.Required {
		if _, ok := got[f]; !ok {
			t.Errorf("receipt lacks required field %q", f)
		}
	}
	for f := range got {
		if _, ok := schema.Properties[f]; !ok {
			t.Errorf("receipt field %q is not documented in the schema", f)
		}
		if !slices.Contains(schema.Required, f) {
			t.Errorf("receipt field %q always present but not required in the schema", f)
		}
	}
}
