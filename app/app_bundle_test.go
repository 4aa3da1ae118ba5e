package app_test

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/companyos/companyos/app"
	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/projections/ledger"
	"github.com/companyos/companyos/schemas"
)

// bundleFiles returns the embedded bundle's files, with edit applied.
func bundleFiles(t *testing.T, edit func(map[string]string)) map[string]string {
	t.Helper()
	root, err := fs.Sub(schemas.Policy, "policy")
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{}
	err = fs.WalkDir(root, ".", func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() && p == "scenarios" {
			return fs.SkipDir
		}
		if err != nil || d.IsDir() || !(strings.HasSuffix(p, ".rego") || strings.HasSuffix(p, ".json") || p == "VERSION") {
			return err
		}
		b, err := fs.ReadFile(root, p)
		files[p] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	edit(files)
	return files
}

func publishBody(t *testing.T, files map[string]string) string {
	b, err := json.Marshal(map[string]any{"tenant": "pilot-1", "type": "policy.bundle.publish", "justification": "grant viewers entity.create",
		"payload": map[string]any{"files": files}})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Policy changes are commands: a broken bundle is refused with its errors;
// a good one is receipted, published and hot-reloaded by the running
// processor, and under a steady load every receipt's decision matches the
// bundle version stamped into it — no wrong decision during the switch.
func TestPolicyBundlePublishHotReload(t *testing.T) {
	s := startStack(t, func(c *app.Config) { c.RatePerTenant = 100000 })

	broken := bundleFiles(t, func(f map[string]string) { f["authz.rego"] += "\nthis is not rego\n" })
	r := s.do("POST", "/v1/commands", s.admin, publishBody(t, broken))
	expect(t, r, 422, "invalid-bundle")
	if !strings.Contains(string(r.raw), "authz.rego") {
		t.Fatalf("refusal does not name the error: %s", r.raw)
	}
	failing := bundleFiles(t, func(f map[string]string) { f["extra_test.rego"] = "package x_test\ntest_fails if { false }\n" })
	expect(t, s.do("POST", "/v1/commands", s.admin, publishBody(t, failing)), 422, "invalid-bundle")

	viewer := s.tokenWithRoles("user:viewer", []string{"creator"}, "pilot-1")
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			s.do("POST", "/v1/commands", viewer, fmt.Sprintf(`{"tenant":"pilot-1","type":"entity.create","payload":{"id":"doc:v%d","kind":"doc"}}`, i))
		}
	}()
	time.Sleep(300 * time.Millisecond)
	good := bundleFiles(t, func(f map[string]string) {
		f["VERSION"] = "0.2.0\n"
		f["data.json"] = strings.Replace(f["data.json"], `"roles": {`, `"roles": {
      "creator": {"description": "may create entities anywhere", "actions": ["entity.create"]},`, 1)
	})
	pub := s.do("POST", "/v1/commands", s.admin, publishBody(t, good))
	expect(t, pub, 201, "")
	// Wait until a viewer create is allowed: the bundle was hot-reloaded.
	deadline := time.Now().Add(20 * time.Second)
	for {
		r := s.do("POST", "/v1/policy/preflight", viewer, `{"tenant":"pilot-1","type":"entity.create","payload":{"id":"doc:probe","kind":"doc"}}`)
		if r.body["decision"] == "allow" {
			if v, _ := r.body["policy_version"].(string); !strings.HasPrefix(v, "0.2.0+") {
				t.Fatalf("allowed by %s", v)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("bundle never hot-reloaded: %s", r.raw)
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()

	// Every viewer receipt: allow exactly when decided by 0.2.0.
	var all []ledger.ListedReceipt
	cursor := ""
	deadline = time.Now().Add(20 * time.Second)
	for {
		r := s.do("GET", "/v1/provenance/receipts?tenant=pilot-1&actor=user:viewer&limit=1000"+cursor, s.admin, "")
		var lr ledger.ListResponse
		if err := json.Unmarshal(r.raw, &lr); err != nil {
			t.Fatal(err)
		}
		all = append(all, lr.Receipts...)
		if lr.NextCursor == "" {
			break
		}
		cursor = "&cursor=" + lr.NextCursor
		if time.Now().After(deadline) {
			t.Fatal("listing did not finish")
		}
	}
	var before, after int
	for _, lr := range all {
		env, _ := events.ParseEnvelope(lr.Envelope)
		rc, _ := events.ParseReceipt(env.Payload)
		newBundle := strings.HasPrefix(rc.PolicyVersion, "0.2.0+")
		if (rc.Decision == events.DecisionAllow) != newBundle {
			t.Fatalf("receipt %s: %s by %s", rc.ID, rc.Decision, rc.PolicyVersion)
		}
		if newBundle {
			after++
		} else {
			before++
		}
	}
	if before == 0 || after == 0 {
		t.Fatalf("load did not span the reload: %d before, %d after", before, after)
	}
	t.Logf("%d viewer receipts under 0.1.0 (deny), %d under 0.2.0 (allow)", before, after)
}
