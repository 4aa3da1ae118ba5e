package graph

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"testing"

	"github.com/companyos/companyos/events"
)

func snapshotTenants(t testing.TB) *Tenants {
	t.Helper()
	ts := NewTenants()
	for i, c := range smallChanges() {
		if err := ts.Apply("acme", uint64(i+1), c); err != nil {
			t.Fatal(err)
		}
	}
	n := uint64(len(smallChanges()))
	extra := []*events.Change{
		del("svc:C", "service_component", 2), // tombstone
		link("svc:A", "calls", "svc:stub"),   // stub node
		put("user:num", "user", 3, map[string]any{"n": json.Number("42"), "f": 1.5, "nested": map[string]any{"a": []any{"x", true, nil}}, "html": "<&>"}),
		nil,                            // a deny receipt
		link("svc:A", "self", "svc:A"), // self-loop
	}
	for i, c := range extra {
		if err := ts.Apply("acme", n+uint64(i)+1, c); err != nil {
			t.Fatal(err)
		}
	}
	for i, c := range genChanges(genSpec{services: 200, dbs: 50, datasets: 100, users: 100, groups: 10, roles: 10, edges: 1500, seed: 9}) {
		if err := ts.Apply("globex", uint64(i+1), c); err != nil {
			t.Fatal(err)
		}
	}
	if err := ts.Apply("empty", 1, nil); err != nil {
		t.Fatal(err)
	}
	return ts
}

func writeSnapshot(t testing.TB, ts *Tenants, offsets map[int32]int64) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := WriteSnapshot(&buf, ts, offsets); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// assertSameTenants compares everything observable: tenants, seqs, stats,
// nodes (attributes by their JSON), edges and a query's answer.
func assertSameTenants(t *testing.T, got, want *Tenants) {
	t.Helper()
	if !reflect.DeepEqual(got.Names(), want.Names()) {
		t.Fatalf("tenants %v, want %v", got.Names(), want.Names())
	}
	for _, name := range want.Names() {
		g, w := got.Graph(name), want.Graph(name)
		if g.AppliedSeq() != w.AppliedSeq() || g.Tenant() != name {
			t.Errorf("%s: seq %d, want %d", name, g.AppliedSeq(), w.AppliedSeq())
		}
		if !reflect.DeepEqual(g.Stats(), w.Stats()) {
			t.Errorf("%s: stats %+v, want %+v", name, g.Stats(), w.Stats())
		}
		if !reflect.DeepEqual(edgeSet(t, g), edgeSet(t, w)) {
			t.Errorf("%s: edges differ", name)
		}
		if len(g.nodes) != len(w.nodes) {
			t.Fatalf("%s: %d nodes, want %d", name, len(g.nodes), len(w.nodes))
		}
		for _, wn := range w.nodes {
			gn, ok := g.Node(wn.id)
			wv, wok := w.Node(wn.id)
			if ok != wok {
				t.Errorf("%s: node %s found=%v, want %v", name, wn.id, ok, wok)
				continue
			}
			gj, _ := json.Marshal(gn)
			wj, _ := json.Marshal(wv)
			if !bytes.Equal(gj, wj) {
				t.Errorf("%s: node %s = %s, want %s", name, wn.id, gj, wj)
			}
		}
		for _, src := range []string{"rel(3hop, 'svc:A'→'*', dir='both')", "rel(3hop, 'svc:00000'→'*', dir='both')"} {
			q := mustParse(t, src)
			a, err1 := Execute(context.Background(), g, q, Options{Limit: MaxLimit})
			b, err2 := Execute(context.Background(), w, q, Options{Limit: MaxLimit})
			aj, _ := json.Marshal(a)
			bj, _ := json.Marshal(b)
			if err1 != nil || err2 != nil || !bytes.Equal(aj, bj) {
				t.Errorf("%s: %s differs after the round trip (%v, %v)", name, src, err1, err2)
			}
		}
	}
}

func TestSnapshotRoundTrip(t *testing.T) {
	ts := snapshotTenants(t)
	offsets := map[int32]int64{0: 17, 3: 1 << 40, 1: 0}
	data := writeSnapshot(t, ts, offsets)
	got, gotOffsets, err := ReadSnapshot(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(gotOffsets, offsets) {
		t.Errorf("offsets %v, want %v", gotOffsets, offsets)
	}
	assertSameTenants(t, got, ts)
	if n, _ := got.Graph("acme").Node("user:num"); n.Attrs["n"] != json.Number("42") || n.Attrs["f"] != json.Number("1.5") {
		t.Errorf("numbers come back as json.Number: %#v", n.Attrs)
	}
	// Deterministic: writing the restored tenants gives the same bytes.
	if again := writeSnapshot(t, got, gotOffsets); !bytes.Equal(again, data) {
		t.Error("snapshot of a restored snapshot differs")
	}
	// The restored graph keeps working: replays are skipped, new seqs apply,
	// stubs and tombstones behave as before.
	acme := got.Graph("acme")
	seq := acme.AppliedSeq()
	if err := got.Apply("acme", seq, link("svc:A", "x", "svc:B")); err != nil || acme.HasEdge("svc:A", "x", "svc:B") {
		t.Errorf("replay after restore: %v", err)
	}
	if err := got.Apply("acme", seq+1, link("svc:A", "x", "svc:B")); err != nil || !acme.HasEdge("svc:A", "x", "svc:B") {
		t.Errorf("apply after restore: %v", err)
	}
	if changed, _ := acme.ApplyChange(put("svc:C", "service_component", 2, nil)); changed {
		t.Error("stale put resurrected a restored tombstone")
	}
	if changed, _ := acme.ApplyChange(put("svc:stub", "service_component", 1, nil)); !changed {
		t.Error("restored stub not filled by a put")
	}

	// Empty registry, no offsets.
	empty, off, err := ReadSnapshot(bytes.NewReader(writeSnapshot(t, NewTenants(), nil)))
	if err != nil || len(empty.Names()) != 0 || len(off) != 0 {
		t.Errorf("empty snapshot: %v %v %v", empty.Names(), off, err)
	}
}

func TestSnapshotCorruption(t *testing.T) {
	data := writeSnapshot(t, snapshotTenants(t), map[int32]int64{0: 5})
	check := func(what string, b []byte) {
		t.Helper()
		ts, off, err := ReadSnapshot(bytes.NewReader(b))
		if err == nil || ts != nil || off != nil {
			t.Fatalf("%s: no error (%v)", what, err)
		}
		if !errors.Is(err, ErrCorruptSnapshot) {
			t.Fatalf("%s: %v does not wrap ErrCorruptSnapshot", what, err)
		}
	}
	// Flip one bit at many positions: header, body, checksum.
	step := max(1, len(data)/500)
	for i := 0; i < len(data); i += step {
		b := bytes.Clone(data)
		b[i] ^= 0x10
		check("flip", b)
	}
	b := bytes.Clone(data)
	b[len(b)-1] ^= 1
	check("flip last", b)
	// Truncate anywhere, including to nothing; append garbage.
	for _, n := range []int{0, 1, 8, 9, 40, len(data) / 2, len(data) - 33, len(data) - 32, len(data) - 1} {
		check("truncate", data[:n])
	}
	check("append", append(bytes.Clone(data), 0))
	// A different version is refused even with a valid checksum.
	check("version", append([]byte("COSGRAPH\x02"), make([]byte, 40)...))
	check("magic", append([]byte("NOTGRAPH\x01"), make([]byte, 40)...))
}

func TestSnapshotWriteError(t *testing.T) {
	err := WriteSnapshot(failWriter{}, snapshotTenants(t), nil)
	if err == nil {
		t.Fatal("write error ignored")
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }
