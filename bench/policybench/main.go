// Command policybench measures the policy layer (issue: policy layer
// benchmark): attribute resolution from tenant state, in-process decision
// latency and throughput (uncached and through the decision cache),
// simulation over a log of N receipts, and — with --url — preflight latency
// over HTTP against a running server.
//
//	go run ./bench/policybench --receipts 1000000
//	go run ./bench/policybench --url http://127.0.0.1:8080 --token "$(cat .data/admin.token)"
package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/companyos/companyos/bench/fixture"
	"github.com/companyos/companyos/commands"
	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/policy"
	"github.com/companyos/companyos/schemas"
)

func main() {
	samples := flag.Int("samples", 20000, "inputs resolved and decided for the latency distributions")
	receipts := flag.Int("receipts", 200000, "receipts in the synthetic log for the simulation (0 = skip)")
	url := flag.String("url", "", "measure POST /v1/policy/preflight against this server")
	token := flag.String("token", "", "bearer token for --url (admin)")
	n := flag.Int("preflights", 2000, "preflight requests for --url")
	flag.Parse()
	ctx := context.Background()
	fmt.Printf("machine: %d CPUs (GOMAXPROCS %d), %s\n", runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version())

	if *url != "" {
		preflight(*url, *token, *n)
		return
	}
	engine, err := policy.Default(ctx)
	check(err)

	// 1. Attribute resolution on the graph50k fixture.
	g, err := fixture.Generate(7, 50000, 220000)
	check(err)
	st := commands.NewTenantState("pilot-1")
	var users, others []string
	for _, e := range g.Entities {
		check(st.ApplyChange(&events.Change{Op: events.OpEntityPut, Entity: &events.Entity{ID: e.ID, Kind: e.Kind, Attrs: e.Attrs, Version: 1}}))
		if e.Kind == "user" {
			users = append(users, e.ID)
		} else {
			others = append(others, e.ID)
		}
	}
	for _, r := range g.Relations {
		rel := events.Relation{From: r.From, Rel: r.Rel, To: r.To}
		check(st.ApplyChange(&events.Change{Op: events.OpRelationLink, Relation: &rel}))
	}
	rng := mrand.New(mrand.NewPCG(1, 2))
	inputs := make([]policy.Input, *samples)
	resolve := make([]time.Duration, *samples)
	now := time.Now()
	for i := range inputs {
		p := commands.Principal{ID: users[rng.IntN(len(users))], MFA: true, AuthTime: now}
		cmd := commands.Command{Tenant: "pilot-1", Type: commands.TypeEntityUpdate}
		pl := &commands.EntityUpdate{ID: others[rng.IntN(len(others))], Attrs: map[string]any{"x": 1}}
		t0 := time.Now()
		inputs[i] = commands.PolicyInput(st, p, cmd, pl, now)
		resolve[i] = time.Since(t0)
	}
	report("attribute resolution (PolicyInput, graph50k state)", resolve)

	// 2. Decisions, uncached, one goroutine: latency and decisions/s/core.
	lat := make([]time.Duration, len(inputs))
	start := time.Now()
	allow := 0
	for i, in := range inputs {
		t0 := time.Now()
		if engine.Decide(ctx, in).Allow {
			allow++
		}
		lat[i] = time.Since(t0)
	}
	el := time.Since(start)
	report("decision, uncached, 1 goroutine", lat)
	fmt.Printf("  throughput: %.0f decisions/s on one core (%d allow, %d deny)\n", float64(len(inputs))/el.Seconds(), allow, len(inputs)-allow)

	// 3. Through the decision cache.
	r := policy.NewReloadable(engine, policy.ReloadableConfig{})
	for i, in := range inputs {
		t0 := time.Now()
		r.Decide(ctx, in)
		lat[i] = time.Since(t0)
	}
	report("decision via the cache (first pass: misses fill it)", lat)
	start = time.Now()
	for i, in := range inputs {
		t0 := time.Now()
		r.Decide(ctx, in)
		lat[i] = time.Since(t0)
	}
	fmt.Printf("  cached pass: %.0f decisions/s on one core\n", float64(len(inputs))/time.Since(start).Seconds())
	report("decision via the cache (second pass)", lat)

	// 4. Simulation over a synthetic log.
	if *receipts > 0 {
		simulate(ctx, *receipts)
	}
}

func report(name string, d []time.Duration) {
	s := slices.Clone(d)
	slices.Sort(s)
	q := func(p float64) time.Duration { return s[min(len(s)-1, int(p*float64(len(s))))] }
	fmt.Printf("%s: n=%d p50=%s p95=%s p99=%s max=%s\n", name, len(s), q(0.50), q(0.95), q(0.99), s[len(s)-1])
}

// simulate writes n signed receipts (60 tenants, entity creates and
// updates by principals with token roles) to an embedded broker and runs
// commands.Simulate over them with the live bundle as the candidate.
func simulate(ctx context.Context, n int) {
	dir, err := os.MkdirTemp("", "policybench")
	check(err)
	defer os.RemoveAll(dir)
	b, err := events.StartBroker(events.BrokerConfig{Addr: "127.0.0.1:0", DataDir: filepath.Join(dir, "kafka"), Partitions: 6})
	check(err)
	defer b.Close()
	cl, err := kgo.NewClient(kgo.SeedBrokers(b.Addrs()...), kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)), kgo.ProducerBatchMaxBytes(1<<20))
	check(err)
	defer cl.Close()
	check(events.EnsureTopics(ctx, cl, events.TopicsConfig{Partitions: 6}))
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	signer := events.NewSigner(key)
	live, _ := policy.Default(ctx)
	version := live.Version()
	// The simulation uses the tools' generous timeout, like the CLI.
	engine, err := policy.New(ctx, policy.Config{Bundle: policyBundle(), Timeout: policy.ToolTimeout})
	check(err)

	const tenants = 60
	start := time.Now()
	type chain struct {
		c  events.Chain
		mu sync.Mutex
	}
	chains := make([]*chain, tenants)
	for i := range chains {
		chains[i] = &chain{c: events.NewChain()}
	}
	var wg sync.WaitGroup
	workers := runtime.GOMAXPROCS(0)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for t := w; t < tenants; t += workers {
				tenant := fmt.Sprintf("t%02d", t)
				c := chains[t]
				per := n / tenants
				for i := range per {
					id := fmt.Sprintf("doc:%d", i%2000)
					typ, roles := commands.TypeEntityCreate, []string{"admin"}
					decision := events.DecisionAllow
					var change *events.Change
					if i >= 2000 {
						typ = commands.TypeEntityUpdate
					}
					if i%7 == 3 {
						roles = []string{"editor"} // editors without a region are denied
						decision = events.DecisionDeny
					}
					cmd, _ := json.Marshal(map[string]any{"type": typ, "payload": map[string]any{"id": id, "kind": "doc", "attrs": map[string]any{"n": i}}})
					if typ == commands.TypeEntityCreate {
						cmd, _ = json.Marshal(map[string]any{"type": typ, "payload": map[string]any{"id": id, "kind": "doc", "attrs": map[string]any{"n": i}}})
					} else {
						cmd, _ = json.Marshal(map[string]any{"type": typ, "payload": map[string]any{"id": id, "attrs": map[string]any{"n": i}}})
					}
					if decision == events.DecisionAllow {
						change = &events.Change{Op: events.OpEntityPut, Entity: &events.Entity{ID: id, Kind: "doc", Attrs: map[string]any{"n": i}, Version: uint64(i/2000 + 1)}}
					}
					seq, prev := c.c.Next()
					r := events.Receipt{ID: fmt.Sprintf("rcpt_%s_%d", tenant, seq), Action: typ, Actor: "user:u", Tenant: tenant, Decision: decision,
						EvidenceHash: events.EvidenceHash(cmd), PolicyVersion: version, CreatedAt: time.Now().UTC(), Selective: map[string]string{},
						Seq: seq, PrevHash: prev, CommandID: fmt.Sprintf("cmd_%s_%d", tenant, seq), Subject: id, Command: cmd,
						Rationale: json.RawMessage("[]"), Obligations: json.RawMessage("[]"),
						Principal: &events.ReceiptPrincipal{ID: "user:u", Roles: roles, MFA: true, AuthTime: time.Now().UTC()}}
					r.Change = json.RawMessage("null")
					if change != nil {
						r.Change, _ = json.Marshal(change)
					}
					payload, _ := events.MarshalReceipt(r)
					_ = c.c.Append(r, payload)
					env := signer.Sign(payload)
					v, _ := env.Marshal()
					cl.Produce(ctx, &kgo.Record{Topic: events.TopicEvents, Key: []byte(tenant), Value: v}, func(_ *kgo.Record, err error) { check(err) })
				}
			}
		}()
	}
	wg.Wait()
	check(cl.Flush(ctx))
	total := (n / tenants) * tenants
	fmt.Printf("simulation log: %d receipts written in %s\n", total, time.Since(start).Round(time.Millisecond))

	rep, err := commands.Simulate(ctx, commands.SimulateConfig{Brokers: b.Addrs(), Candidate: policy.NewReloadable(engine, policy.ReloadableConfig{})})
	check(err)
	fmt.Printf("simulation: %d receipts read, %d evaluated, %d changed, %d failed closed in %.1fs (%.0f receipts/s)\n",
		rep.Receipts, rep.Evaluated, rep.Changed, rep.FailedClosed, rep.Seconds, float64(rep.Receipts)/rep.Seconds)
}

func preflight(url, token string, n int) {
	body := []byte(`{"tenant":"bench","type":"entity.update","payload":{"id":"doc:1","attrs":{"x":1}}}`)
	lat := make([]time.Duration, 0, n)
	client := &http.Client{Timeout: 10 * time.Second}
	for range n {
		req, _ := http.NewRequest("POST", url+"/v1/policy/preflight", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		t0 := time.Now()
		resp, err := client.Do(req)
		check(err)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			slog.Error("preflight", "status", resp.StatusCode)
			os.Exit(1)
		}
		lat = append(lat, time.Since(t0))
	}
	report("preflight over HTTP (sequential)", lat)
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "policybench:", err)
		os.Exit(1)
	}
}

func policyBundle() fs.FS {
	b, err := fs.Sub(schemas.Policy, "policy")
	check(err)
	return b
}
