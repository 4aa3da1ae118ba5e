package app_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/companyos/companyos/app"
	"github.com/companyos/companyos/events"
)

func (s *stack) graphQuery(token string, body map[string]any) response {
	s.t.Helper()
	b, _ := json.Marshal(body)
	return s.do("POST", "/v1/graph/query", token, string(b))
}

func nodeIDs(r response) []string {
	var out []string
	nodes, _ := r.body["nodes"].([]any)
	for _, n := range nodes {
		out = append(out, n.(map[string]any)["id"].(string))
	}
	return out
}

func TestGraphQueryEndToEnd(t *testing.T) {
	dataDir := t.TempDir()
	s := startStack(t, func(c *app.Config) { c.DataDir = dataDir; c.ConsistencyTimeout = 2 * time.Second })
	cmds := []string{
		`{"tenant":"g1","type":"entity.create","payload":{"id":"svc:A","kind":"service","attrs":{"region":"us"}}}`,
		`{"tenant":"g1","type":"entity.create","payload":{"id":"svc:B","kind":"service"}}`,
		`{"tenant":"g1","type":"entity.create","payload":{"id":"db:orders","kind":"db"}}`,
		`{"tenant":"g1","type":"entity.create","payload":{"id":"db:users","kind":"db"}}`,
		`{"tenant":"g1","type":"entity.create","payload":{"id":"dataset:prod","kind":"dataset","attrs":{"region":"us"}}}`,
		`{"tenant":"g1","type":"entity.create","payload":{"id":"user:alice","kind":"user","attrs":{"region":"us"}}}`,
		`{"tenant":"g1","type":"entity.create","payload":{"id":"user:bob","kind":"user","attrs":{"region":"us"}}}`,
		`{"tenant":"g1","type":"entity.create","payload":{"id":"group:admins","kind":"group"}}`,
		`{"tenant":"g1","type":"entity.create","payload":{"id":"role:admin","kind":"role"}}`,
		`{"tenant":"g1","type":"relation.link","payload":{"from":"svc:A","rel":"depends_on","to":"svc:B"}}`,
		`{"tenant":"g1","type":"relation.link","payload":{"from":"svc:B","rel":"depends_on","to":"db:orders"}}`,
		`{"tenant":"g1","type":"relation.link","payload":{"from":"svc:A","rel":"reads","to":"db:users"}}`,
		`{"tenant":"g1","type":"relation.link","payload":{"from":"user:alice","rel":"member_of","to":"group:admins"}}`,
		`{"tenant":"g1","type":"relation.link","payload":{"from":"group:admins","rel":"has_role","to":"role:admin"}}`,
		`{"tenant":"g1","type":"relation.link","payload":{"from":"db:orders","rel":"stores","to":"dataset:prod"}}`,
	}
	var last response
	for _, c := range cmds {
		last = s.do("POST", "/v1/commands", s.admin, c)
		expect(t, last, 201, "")
	}
	token := last.body["consistency"].(string)

	// Read-your-writes: the token of the last command makes the query wait for it.
	r := s.graphQuery(s.admin, map[string]any{"tenant": "g1", "query": "rel(3hop, 'svc:A'→'db:*')", "consistency": token})
	expect(t, r, 200, "")
	if got := strings.Join(nodeIDs(r), ","); got != "db:orders,db:users" {
		t.Fatalf("rel 3hop = %s (%s)", got, r.raw)
	}
	if paths, _ := r.body["paths"].([]any); len(paths) != 2 {
		t.Fatalf("paths %s", r.raw)
	}
	// Edge-type filter and the ASCII arrow.
	r = s.graphQuery(s.admin, map[string]any{"tenant": "g1", "query": "rel(3hop, 'svc:A'->'db:*', rel='depends_on')"})
	expect(t, r, 200, "")
	if got := strings.Join(nodeIDs(r), ","); got != "db:orders" {
		t.Fatalf("rel with filter = %s", got)
	}
	r = s.graphQuery(s.admin, map[string]any{"tenant": "g1", "query": "path($from, 'dataset:prod')", "vars": map[string]any{"from": "svc:A"}})
	expect(t, r, 200, "")
	if !strings.Contains(string(r.raw), `"dataset:prod"`) {
		t.Fatalf("path %s", r.raw)
	}
	r = s.graphQuery(s.admin, map[string]any{"tenant": "g1", "query": map[string]any{"op": "neighbors", "start": "svc:A", "depth": 1}})
	expect(t, r, 200, "")
	if got := strings.Join(nodeIDs(r), ","); got != "db:users,svc:B" {
		t.Fatalf("neighbors = %s (%s)", got, r.raw)
	}
	// who_can: alice is an admin through group membership; bob is nothing.
	r = s.graphQuery(s.admin, map[string]any{"tenant": "g1", "query": "who_can('entity.delete', 'dataset:prod')"})
	expect(t, r, 200, "")
	ps, _ := r.body["principals"].([]any)
	if len(ps) != 1 || ps[0].(map[string]any)["id"] != "user:alice" || !strings.Contains(string(r.raw), "group:admins") {
		t.Fatalf("who_can %s", r.raw)
	}

	// The processor agrees with who_can: alice may delete, bob may not.
	alice, bob := s.tokenWithRoles("user:alice", nil, "g1"), s.tokenWithRoles("user:bob", nil, "g1") // delete is a step-up action
	expect(t, s.do("POST", "/v1/commands", bob, `{"tenant":"g1","type":"entity.delete","payload":{"id":"dataset:prod","cascade":true}}`), 403, "policy-denied")
	del := s.do("POST", "/v1/commands", alice, `{"tenant":"g1","type":"entity.delete","payload":{"id":"dataset:prod","cascade":true}}`)
	expect(t, del, 201, "")
	gone := s.graphQuery(s.admin, map[string]any{"tenant": "g1", "query": "rel(3hop, 'svc:A'->'dataset:*')", "consistency": del.body["consistency"]})
	expect(t, gone, 200, "")
	if len(nodeIDs(gone)) != 0 {
		t.Fatalf("deleted dataset still reachable: %s", gone.raw)
	}

	// Errors.
	e := s.graphQuery(s.admin, map[string]any{"tenant": "g1", "query": "rel(3hop, 'svc:A' 'db:*')"})
	expect(t, e, 422, "query-syntax")
	if !strings.Contains(e.body["detail"].(string), "1:") {
		t.Fatalf("syntax error without a column: %s", e.raw)
	}
	expect(t, s.graphQuery(s.admin, map[string]any{"tenant": "g1", "query": "rel(9hop, 'svc:A'->'*')"}), 422, "limit-exceeded")
	expect(t, s.graphQuery(s.admin, map[string]any{"tenant": "g1", "query": "rel(1hop, 'svc:A'->'*')", "cursor": "bogus"}), 422, "validation")
	expect(t, s.graphQuery(s.admin, map[string]any{"tenant": "g1", "query": "rel(1hop, 'svc:A'->'*')", "colour": 1}), 422, "validation")
	expect(t, s.graphQuery(s.admin, map[string]any{"tenant": "nope", "query": "rel(1hop, 'svc:A'->'*')"}), 404, "not-found")
	other := s.token("user:eve", "g2")
	expect(t, s.graphQuery(other, map[string]any{"tenant": "g1", "query": "rel(1hop, 'svc:A'->'*')"}), 404, "not-found")
	expect(t, s.graphQuery("", map[string]any{"tenant": "g1", "query": "rel(1hop, 'svc:A'->'*')"}), 401, "unauthorized")
	future := events.ConsistencyToken("g1", 10_000)
	expect(t, s.graphQuery(s.admin, map[string]any{"tenant": "g1", "query": "rel(1hop, 'svc:A'->'*')", "consistency": future}), 504, "consistency-timeout")
	expect(t, s.graphQuery(s.admin, map[string]any{"tenant": "g1", "query": "rel(1hop, 'svc:A'->'*')", "consistency": events.ConsistencyToken("g2", 1)}), 422, "validation")

	// Pagination: pages of 1 walk the whole result without duplicates.
	seen := map[string]bool{}
	cursor := ""
	for page := 0; page < 10; page++ {
		body := map[string]any{"tenant": "g1", "query": "rel(3hop, 'svc:A'->'*')", "limit": 1}
		if cursor != "" {
			body["cursor"] = cursor
		}
		p := s.graphQuery(s.admin, body)
		expect(t, p, 200, "")
		for _, id := range nodeIDs(p) {
			if seen[id] {
				t.Fatalf("page %d repeats %s", page, id)
			}
			seen[id] = true
		}
		cursor, _ = p.body["next_cursor"].(string)
		if cursor == "" {
			break
		}
	}
	if len(seen) != 3 { // db:orders, db:users, svc:B (dataset:prod was deleted)
		t.Fatalf("pages covered %v", seen)
	}
}

// A receipt the projector cannot apply goes to the DLQ with its reason and
// the partition keeps moving.
func TestGraphPoisonGoesToDLQ(t *testing.T) {
	s := startStack(t, func(c *app.Config) { c.Partitions = 1 })
	expect(t, s.do("POST", "/v1/commands", s.admin, `{"tenant":"p1","type":"entity.create","payload":{"id":"svc:A","kind":"service"}}`), 201, "")
	cl, err := kgo.NewClient(kgo.SeedBrokers(s.app.Brokers()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: events.TopicEvents, Key: []byte("p1"), Value: []byte("not an envelope")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	// The projector moves past it: a later command shows up in the graph.
	r := s.do("POST", "/v1/commands", s.admin, `{"tenant":"p1","type":"entity.create","payload":{"id":"svc:B","kind":"service"}}`)
	expect(t, r, 201, "")
	q := s.graphQuery(s.admin, map[string]any{"tenant": "p1", "query": "neighbors('svc:B', depth=1)", "consistency": r.body["consistency"]})
	expect(t, q, 200, "")

	dlq, err := kgo.NewClient(kgo.SeedBrokers(s.app.Brokers()...), kgo.ConsumeTopics(events.TopicDLQ), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer dlq.Close()
	for {
		fs := dlq.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatal("no DLQ record within 20s")
		}
		var found *kgo.Record
		fs.EachRecord(func(rec *kgo.Record) {
			if string(rec.Value) == "not an envelope" {
				found = rec
			}
		})
		if found != nil {
			reason := ""
			for _, h := range found.Headers {
				if strings.Contains(strings.ToLower(h.Key), "reason") {
					reason = string(h.Value)
				}
			}
			if !strings.Contains(reason, "envelope") {
				t.Fatalf("DLQ record without a reason naming the problem: headers %v", found.Headers)
			}
			hdr := map[string]string{}
			for _, h := range found.Headers {
				hdr[h.Key] = string(h.Value)
			}
			if hdr["source_topic"] != events.TopicEvents || hdr["source_partition"] != "0" || hdr["source_offset"] == "" {
				t.Fatalf("DLQ record lacks its source: %v", hdr)
			}
			return
		}
	}
}

// Restart = snapshot + tail, and the graph is the same.
func TestGraphSnapshotRestart(t *testing.T) {
	dataDir := t.TempDir()
	mutate := func(c *app.Config) { c.DataDir = dataDir }
	s := startStack(t, mutate)
	var tok string
	for i := 0; i < 20; i++ {
		r := s.do("POST", "/v1/commands", s.admin, fmt.Sprintf(`{"tenant":"sn","type":"entity.create","payload":{"id":"svc:%d","kind":"service"}}`, i))
		expect(t, r, 201, "")
		if i > 0 {
			r = s.do("POST", "/v1/commands", s.admin, fmt.Sprintf(`{"tenant":"sn","type":"relation.link","payload":{"from":"svc:%d","rel":"depends_on","to":"svc:%d"}}`, i-1, i))
			expect(t, r, 201, "")
		}
		tok = r.body["consistency"].(string)
	}
	before := s.graphQuery(s.admin, map[string]any{"tenant": "sn", "query": "rel(6hop, 'svc:0'->'*')", "consistency": tok})
	expect(t, before, 200, "")
	_ = tok
	s.stop()
	snap := filepath.Join(dataDir, "snapshots", "graph.snap")
	if fi, err := os.Stat(snap); err != nil || fi.Size() == 0 {
		t.Fatalf("no snapshot written on shutdown: %v", err)
	}
	restart := func() *stack {
		return startStack(t, func(c *app.Config) {
			c.DataDir = dataDir
			c.KafkaAddr = s.kafkaAddr
			c.PGDSN = s.pgDSN
			c.ClickHouseDatabase = s.chDB
		})
	}
	same := func(s2 *stack) {
		t.Helper()
		after := s2.graphQuery(s2.admin, map[string]any{"tenant": "sn", "query": "rel(6hop, 'svc:0'->'*')", "consistency": tok})
		expect(t, after, 200, "")
		if strings.Join(nodeIDs(before), ",") != strings.Join(nodeIDs(after), ",") {
			t.Fatalf("graph differs after restart:\n%s\n%s", before.raw, after.raw)
		}
	}
	s2 := restart() // snapshot + tail
	same(s2)
	s2.stop()
	// A corrupt snapshot falls back to a full replay, never to a wrong graph.
	raw, _ := os.ReadFile(snap)
	raw[len(raw)/2] ^= 0xff
	if err := os.WriteFile(snap, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	same(restart())
}
