package commands

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/policy"
)

// Simulation (blast radius): replay the commands recorded in the event log
// against a candidate policy bundle and report every decision that would
// change. Each receipt carries the command as decided, the authenticated
// principal (token roles, MFA) and its time, and the tenant state before it
// is rebuilt from the receipts before it — so the candidate sees exactly
// the input the live bundle saw.

// SimulateConfig configures Simulate.
type SimulateConfig struct {
	Brokers   []string                // required
	Candidate Decider                 // required: the bundle under test (e.g. a *policy.Reloadable for its cache)
	Since     time.Time               // optional: only receipts created at or after
	Tenant    string                  // optional: one tenant
	Examples  int                     // optional: examples kept per group (default 3)
	Progress  func(read, total int64) // optional
}

// SimulationReport is the blast radius of a candidate bundle.
type SimulationReport struct {
	CandidateVersion string `json:"candidate_version"`
	Since            string `json:"since,omitempty"`
	Receipts         int64  `json:"receipts_read"`
	Evaluated        int64  `json:"decisions_evaluated"`
	// Skipped counts receipts that cannot be re-decided: written by the
	// system (purge manifests), before receipts recorded the principal, or
	// older than Since (they still rebuild state).
	Skipped   int64          `json:"skipped"`
	Unchanged int64          `json:"unchanged"`
	// FailedClosed counts evaluations of the candidate that timed out or
	// errored (a deny by fail-closed, not a policy change); they are not
	// counted as changes.
	FailedClosed int64 `json:"failed_closed"`
	Changed   int64          `json:"changed"`
	Groups    []ChangeGroup  `json:"groups"`
	ByAction  map[string]int `json:"changed_by_action"`
	Seconds   float64        `json:"seconds"`
}

// ChangeGroup is the changed decisions that share a direction and the
// candidate's deciding rules.
type ChangeGroup struct {
	From     string          `json:"from"` // live decision
	To       string          `json:"to"`   // candidate decision
	Rules    string          `json:"rules"`
	Count    int64           `json:"count"`
	Examples []ChangeExample `json:"examples"`
}

// ChangeExample is one changed decision.
type ChangeExample struct {
	Tenant     string          `json:"tenant"`
	Seq        uint64          `json:"seq"`
	ReceiptID  string          `json:"receipt_id"`
	Action     string          `json:"action"`
	Actor      string          `json:"actor"`
	Subject    string          `json:"subject"`
	LiveBundle string          `json:"live_policy_version"`
	Rationale  json.RawMessage `json:"candidate_rationale"`
}

// Simulate runs the candidate over the log (all partitions in parallel,
// each partition in log order).
func Simulate(ctx context.Context, cfg SimulateConfig) (SimulationReport, error) {
	if len(cfg.Brokers) == 0 || cfg.Candidate == nil {
		return SimulationReport{}, fmt.Errorf("simulate: brokers and a candidate bundle are required")
	}
	if cfg.Examples <= 0 {
		cfg.Examples = 3
	}
	start := time.Now()
	cl, err := kgo.NewClient(kgo.SeedBrokers(cfg.Brokers...), kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	if err != nil {
		return SimulationReport{}, fmt.Errorf("simulate: client: %w", err)
	}
	defer cl.Close()
	n, err := events.PartitionCount(ctx, cl, events.TopicEvents)
	if err != nil {
		return SimulationReport{}, fmt.Errorf("simulate: %w", err)
	}
	rep := SimulationReport{CandidateVersion: cfg.Candidate.Version(), ByAction: map[string]int{}}
	if !cfg.Since.IsZero() {
		rep.Since = cfg.Since.UTC().Format(time.RFC3339)
	}
	var (
		mu     sync.Mutex
		groups = map[string]*ChangeGroup{}
		read   atomic.Int64
		errs   = make(chan error, n)
		wg     sync.WaitGroup
	)
	for part := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := SimulationReport{ByAction: map[string]int{}}
			localGroups := map[string]*ChangeGroup{}
			tenants := map[string]*TenantState{}
			err := events.ReadToStable(ctx, cl, events.TopicEvents, []int32{part}, func(rec *kgo.Record) error {
				if r := read.Add(1); cfg.Progress != nil && r%10000 == 0 {
					cfg.Progress(r, 0)
				}
				env, err := events.ParseEnvelope(rec.Value)
				if err != nil {
					return fmt.Errorf("partition %d offset %d: %w", part, rec.Offset, err)
				}
				rc, err := events.ParseReceipt(env.Payload)
				if err != nil {
					return fmt.Errorf("partition %d offset %d: %w", part, rec.Offset, err)
				}
				if cfg.Tenant != "" && rc.Tenant != cfg.Tenant {
					return nil
				}
				local.Receipts++
				st := tenants[rc.Tenant]
				if st == nil {
					st = NewTenantState(rc.Tenant)
					tenants[rc.Tenant] = st
				}
				simulateOne(ctx, cfg, st, rc, &local, localGroups)
				if err := st.ApplyReceipt(rc, env.Payload); err != nil {
					return fmt.Errorf("partition %d offset %d: %w", part, rec.Offset, err)
				}
				return nil
			})
			if err != nil {
				errs <- err
				return
			}
			mu.Lock()
			defer mu.Unlock()
			rep.Receipts += local.Receipts
			rep.Evaluated += local.Evaluated
			rep.Skipped += local.Skipped
			rep.Unchanged += local.Unchanged
			rep.FailedClosed += local.FailedClosed
			rep.Changed += local.Changed
			for a, c := range local.ByAction {
				rep.ByAction[a] += c
			}
			for k, g := range localGroups {
				if cur, ok := groups[k]; ok {
					cur.Count += g.Count
					for _, ex := range g.Examples {
						if len(cur.Examples) < cfg.Examples {
							cur.Examples = append(cur.Examples, ex)
						}
					}
				} else {
					groups[k] = g
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return rep, fmt.Errorf("simulate: %w", err)
	}
	for _, g := range groups {
		rep.Groups = append(rep.Groups, *g)
	}
	sort.Slice(rep.Groups, func(i, j int) bool {
		if rep.Groups[i].Count != rep.Groups[j].Count {
			return rep.Groups[i].Count > rep.Groups[j].Count
		}
		return rep.Groups[i].From+rep.Groups[i].Rules < rep.Groups[j].From+rep.Groups[j].Rules
	})
	if rep.Groups == nil {
		rep.Groups = []ChangeGroup{}
	}
	rep.Seconds = time.Since(start).Seconds()
	return rep, nil
}

// simulateOne re-decides one receipt with the candidate, against st as it
// was before the receipt.
func simulateOne(ctx context.Context, cfg SimulateConfig, st *TenantState, rc events.Receipt, rep *SimulationReport, groups map[string]*ChangeGroup) {
	if rc.Principal == nil || rc.Actor == PurgeActor || (!cfg.Since.IsZero() && rc.CreatedAt.Before(cfg.Since)) {
		rep.Skipped++
		return
	}
	cmd, payload, err := decodeLogged(rc)
	if err != nil {
		rep.Skipped++
		return
	}
	p := Principal{ID: rc.Principal.ID, Roles: rc.Principal.Roles, MFA: rc.Principal.MFA, AuthTime: rc.Principal.AuthTime}
	d := cfg.Candidate.Decide(ctx, PolicyInput(st, p, cmd, payload, rc.CreatedAt))
	rep.Evaluated++
	if len(d.Rationale) == 1 && d.Rationale[0].Rule == policy.FailClosedRule {
		rep.FailedClosed++
		return
	}
	to := events.DecisionDeny
	if d.Allow {
		to = events.DecisionAllow
	}
	if to == rc.Decision {
		rep.Unchanged++
		return
	}
	rep.Changed++
	rep.ByAction[rc.Action]++
	var rules []string
	for _, r := range d.Rationale {
		if r.Result == d.Allow && !containsString(rules, r.Rule) {
			rules = append(rules, r.Rule)
		}
	}
	sort.Strings(rules)
	key := rc.Decision + "→" + to + " " + strings.Join(rules, ",")
	g := groups[key]
	if g == nil {
		g = &ChangeGroup{From: rc.Decision, To: to, Rules: strings.Join(rules, ","), Examples: []ChangeExample{}}
		groups[key] = g
	}
	g.Count++
	if len(g.Examples) < cfg.Examples {
		rat, _ := json.Marshal(d.Rationale)
		g.Examples = append(g.Examples, ChangeExample{Tenant: rc.Tenant, Seq: rc.Seq, ReceiptID: rc.ID, Action: rc.Action,
			Actor: rc.Actor, Subject: rc.Subject, LiveBundle: rc.PolicyVersion, Rationale: rat})
	}
}

func containsString(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// decodeLogged rebuilds the command of a receipt. Attributes may hold
// commitment references ({"$selective": …}) instead of values, which live
// validation would refuse, so the payload is decoded without re-validating:
// it was validated when it was decided.
func decodeLogged(rc events.Receipt) (Command, any, error) {
	var c Command
	dec := json.NewDecoder(bytes.NewReader(rc.Command))
	dec.UseNumber()
	if err := dec.Decode(&c); err != nil {
		return Command{}, nil, err
	}
	c.Tenant = rc.Tenant
	var payload any
	switch c.Type {
	case TypeEntityCreate:
		payload = &EntityCreate{}
	case TypeEntityUpdate:
		payload = &EntityUpdate{}
	case TypeEntityDelete:
		payload = &EntityDelete{}
	case TypeRelationLink, TypeRelationUnlink:
		payload = &RelationChange{}
	case TypePricingSet:
		payload = &PricingSet{}
	case TypeApprovalGrant:
		payload = &ApprovalGrant{}
	case TypePolicyPublish:
		payload = &PolicyPublish{}
	default:
		return Command{}, nil, fmt.Errorf("unknown command type %q", c.Type)
	}
	pd := json.NewDecoder(bytes.NewReader(c.Payload))
	pd.UseNumber()
	if err := pd.Decode(payload); err != nil {
		return Command{}, nil, err
	}
	return c, payload, nil
}
