package meterfixture

import (
	"bytes"
	"encoding/json"
	"testing"
)

func TestGenerateIsDeterministic(t *testing.T) {
	a, err := Generate(Config{Tenants: 20, Days: 30, Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Generate(Config{Tenants: 20, Days: 30, Seed: 7})
	ja, _ := json.Marshal(a.Expected)
	jb, _ := json.Marshal(b.Expected)
	if !bytes.Equal(ja, jb) || len(a.Records) != len(b.Records) {
		t.Fatal("same config, different fixture")
	}
	for i := range a.Records {
		if !bytes.Equal(a.Records[i].Value, b.Records[i].Value) {
			t.Fatalf("record %d differs", i)
		}
	}
	c := a.Expected.Counts
	t.Logf("counts %+v, tenant-days %d, total %s, anomalies %+v", c, len(a.Expected.Costs), a.Expected.Total, a.Expected.Anomalies)
	if c.Duplicates == 0 || c.Late == 0 || c.Poison == 0 || c.Unattributed == 0 || c.NoService == 0 || len(a.Expected.Anomalies) != 4 {
		t.Errorf("fixture lacks a feature: %+v", c)
	}
	if len(a.Expected.Costs) != 20*30+a.unattributedDays() {
		t.Errorf("tenant-days = %d", len(a.Expected.Costs))
	}
	if c.Records != c.Events+c.Duplicates+c.Poison {
		t.Errorf("records %d != events %d + duplicates %d + poison %d", c.Records, c.Events, c.Duplicates, c.Poison)
	}
}

func (f *Fixture) unattributedDays() int {
	n := 0
	for _, c := range f.Expected.Costs {
		if c.Tenant == "(unattributed)" {
			n++
		}
	}
	return n
}
