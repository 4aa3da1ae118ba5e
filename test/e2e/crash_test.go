package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/internal/keyfile"
)

var crashTenants = []string{"crash-a", "crash-b", "crash-c"}

const (
	crashWorkers   = 16
	crashKillAfter = 250 // acknowledged commands per burst before SIGKILL
	crashBursts    = 4
)

// crashRequest is one idempotent command and what the client knows of it.
type crashRequest struct {
	key    string
	tenant string
	body   []byte

	acked     bool // the client knows the outcome: a receipt
	status    int  // 201, or 403 for a fail-closed deny (see decided)
	decision  string
	receiptID string
	commandID string
	seq       uint64
	lastErr   string // why the outcome is unknown
}

// decided records res when it is a final, receipted outcome: 201, or a 403
// whose only reason is the policy engine's fail-closed evaluation deadline.
// The engine denies when an evaluation overruns its deadline (which a loaded
// machine can cause); that deny is a signed receipt like any other, so for
// exactly-once it counts as the command's outcome.
func (r *crashRequest) decided(res cmdResult) bool {
	switch {
	case res.Status == http.StatusCreated:
	case res.Status == http.StatusForbidden && res.ReceiptID != "" && isFailClosedTimeout(res.Rationale):
	default:
		r.lastErr = fmt.Sprintf("status %d: %s", res.Status, strings.TrimSpace(string(res.Body)))
		return false
	}
	r.acked, r.status, r.receiptID, r.commandID, r.seq = true, res.Status, res.ReceiptID, res.CommandID, res.Seq
	r.decision = events.DecisionAllow
	if res.Status == http.StatusForbidden {
		r.decision = events.DecisionDeny
	}
	return true
}

func isFailClosedTimeout(rationale json.RawMessage) bool {
	var reasons []struct {
		Rule    string `json:"rule"`
		Message string `json:"message"`
	}
	if json.Unmarshal(rationale, &reasons) != nil || len(reasons) != 1 {
		return false
	}
	return reasons[0].Rule == "fail_closed" && strings.Contains(reasons[0].Message, "deadline exceeded")
}

func newCrashRequest(burst int, n int64) *crashRequest {
	tenant := crashTenants[n%int64(len(crashTenants))]
	body := fmt.Sprintf(`{"tenant":%q,"type":"entity.create","payload":{"id":"svc:crash-%d-%d","kind":"service","attrs":{"burst":"b%d"}}}`,
		tenant, burst, n, burst)
	return &crashRequest{key: fmt.Sprintf("crash-%d-%d", burst, n), tenant: tenant, body: []byte(body)}
}

// TestCrashRestartExactlyOnce SIGKILLs `companyos dev` in the middle of a
// burst of concurrent idempotent commands, crashBursts times, restarting it
// on the same data dir and ports each time. After each restart every command
// whose outcome the client did not learn is retried with its Idempotency-Key
// until it gets its receipt, and every 10th acknowledged one is re-sent and
// must be answered with the same receipt, replayed. Finally the whole receipt
// log is read back and checked: no acknowledged receipt lost, no command
// receipted twice, gap-free per-tenant seq, an unbroken hash chain, valid
// signatures, and nothing in the log that no client sent.
func TestCrashRestartExactlyOnce(t *testing.T) {
	began := time.Now()
	s := startDev(t)
	var all []*crashRequest
	for burst := 1; burst <= crashBursts; burst++ {
		reqs := runBurstAndKill(t, s, burst)
		all = append(all, reqs...)

		restart := time.Now()
		s.start()
		t.Logf("burst %d: restarted in %s", burst, time.Since(restart).Round(time.Millisecond))
		retryUnknown(t, s, reqs)
		resendAcked(t, s, all)
	}
	checkReceiptLog(t, s, all)
	t.Logf("total %s for %d commands", time.Since(began).Round(time.Millisecond), len(all))
}

// runBurstAndKill runs crashWorkers concurrent clients creating entities
// until crashKillAfter commands are acknowledged, then SIGKILLs the server
// while requests are still in flight.
func runBurstAndKill(t *testing.T, s *server, burst int) []*crashRequest {
	t.Helper()
	client := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: crashWorkers}}
	defer client.CloseIdleConnections()
	var (
		next    atomic.Int64
		acked   atomic.Int64
		killed  atomic.Bool
		trigger = make(chan struct{})
		once    sync.Once
		mu      sync.Mutex
		reqs    []*crashRequest
		wg      sync.WaitGroup
	)
	start := time.Now()
	for w := 0; w < crashWorkers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !killed.Load() {
				n := next.Add(1)
				if n > 20*crashKillAfter { // the server stopped making progress; the test fails below
					return
				}
				r := newCrashRequest(burst, n)
				res, err := s.postCommand(context.Background(), client, s.AdminToken, r.key, r.body)
				if err != nil {
					r.lastErr = err.Error()
				} else if r.decided(res) && acked.Add(1) == crashKillAfter {
					once.Do(func() { close(trigger) })
				}
				mu.Lock()
				reqs = append(reqs, r)
				mu.Unlock()
			}
		}()
	}
	select {
	case <-trigger:
		// Land the kill at a random point of the processor's transaction
		// cycle, not always right after a commit.
		time.Sleep(time.Duration(rand.IntN(15_000)) * time.Microsecond)
	case <-time.After(30 * time.Second):
		killed.Store(true)
		s.kill()
		wg.Wait()
		t.Fatalf("burst %d: only %d of %d commands acknowledged after 30s", burst, acked.Load(), crashKillAfter)
	}
	s.kill()
	killed.Store(true)
	wg.Wait()

	unknown := 0
	reasons := map[string]int{}
	for _, r := range reqs {
		if !r.acked {
			unknown++
			reasons[shortReason(r.lastErr)]++
		}
	}
	t.Logf("burst %d: %d requests in %s, %d acknowledged, %d with unknown outcome %v",
		burst, len(reqs), time.Since(start).Round(time.Millisecond), len(reqs)-unknown, unknown, reasons)
	if got := len(reqs) - unknown; got < crashKillAfter {
		t.Fatalf("burst %d: %d acknowledged, want at least %d", burst, got, crashKillAfter)
	}
	return reqs
}

func shortReason(s string) string {
	for _, k := range []string{"connection refused", "connection reset", "EOF", "status 5", "status 4"} {
		if strings.Contains(s, k) {
			return k
		}
	}
	if len(s) > 40 {
		return s[:40]
	}
	return s
}

// retryUnknown re-sends every request without a known outcome, with its own
// Idempotency-Key, until it gets its receipt (201, replayed or new, or a
// fail-closed 403). Retryable answers (429, 503, 504, no response) are
// retried for at most 15 s in all; anything else fails the test.
func retryUnknown(t *testing.T, s *server, reqs []*crashRequest) {
	t.Helper()
	var todo []*crashRequest
	for _, r := range reqs {
		if !r.acked {
			todo = append(todo, r)
		}
	}
	client := &http.Client{Timeout: 20 * time.Second}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(15 * time.Second) // for the whole retry phase
	var replayed, fresh atomic.Int64
	work := make(chan *crashRequest)
	var wg sync.WaitGroup
	var errMu sync.Mutex
	var errs []string
	for w := 0; w < crashWorkers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range work {
				res, err := cmdResult{}, errors.New("not sent: the retry phase ran out of time")
				for time.Now().Before(deadline) && !s.cur.exited() {
					res, err = s.postCommand(context.Background(), client, s.AdminToken, r.key, r.body)
					retryable := err != nil || res.Status == http.StatusTooManyRequests ||
						res.Status == http.StatusServiceUnavailable || res.Status == http.StatusGatewayTimeout
					if !retryable {
						break
					}
					time.Sleep(200 * time.Millisecond)
				}
				firstErr := r.lastErr
				if err != nil || !r.decided(res) {
					errMu.Lock()
					errs = append(errs, fmt.Sprintf("retry %s (first failure %q): err %v, status %d, body %s", r.key, firstErr, err, res.Status, res.Body))
					errMu.Unlock()
					continue
				}
				if res.Replayed {
					replayed.Add(1)
				} else {
					fresh.Add(1)
				}
			}
		}()
	}
	for _, r := range todo {
		work <- r
	}
	close(work)
	wg.Wait()
	for i, e := range errs {
		if i == 10 {
			t.Errorf("… and %d more", len(errs)-10)
			break
		}
		t.Error(e)
	}
	if s.cur.exited() {
		t.Fatalf("companyos dev exited after the restart (%v); its output is below", s.cur.err)
	}
	if len(errs) > 0 {
		// A 504 means the command is in Kafka but the restarted processor
		// never decided it; its log (shown below) tells whether it got stuck
		// loading a partition ("partitions assigned" without "partition
		// state loaded" for a partition that has commands).
		t.Fatalf("%d of %d commands with unknown outcome did not succeed when retried after the restart", len(errs), len(todo))
	}
	t.Logf("retried %d unknown outcomes: %d had been receipted before the crash (replayed), %d were new", len(todo), replayed.Load(), fresh.Load())
}

// resendAcked re-sends every 10th acknowledged request: each must be answered
// from the log with the same receipt and Idempotent-Replayed: true.
func resendAcked(t *testing.T, s *server, reqs []*crashRequest) {
	t.Helper()
	n := 0
	for i, r := range reqs {
		if !r.acked || i%10 != 0 {
			continue
		}
		n++
		res := s.mustPost(s.AdminToken, r.key, string(r.body), r.status)
		if res.ReceiptID != r.receiptID || res.Seq != r.seq || res.CommandID != r.commandID {
			t.Errorf("re-sent %s: got receipt %s seq %d command %s, first answer was receipt %s seq %d command %s",
				r.key, res.ReceiptID, res.Seq, res.CommandID, r.receiptID, r.seq, r.commandID)
		}
		if !res.Replayed {
			t.Errorf("re-sent %s: missing header Idempotent-Replayed: true", r.key)
		}
	}
	t.Logf("re-sent %d acknowledged commands: same receipts, replayed", n)
}

// checkReceiptLog reads all of companyos.events.v1 and checks it against
// what the clients were told.
func checkReceiptLog(t *testing.T, s *server, reqs []*crashRequest) {
	t.Helper()
	var keys keyfile.KeySet
	if err := json.Unmarshal(s.get("/v1/keys"), &keys); err != nil || len(keys.Keys) == 0 {
		t.Fatalf("GET /v1/keys: %v (%d keys)", err, len(keys.Keys))
	}
	recs := readEvents(t, s.KafkaAddr)

	type head struct {
		seq       uint64
		hash      string
		partition int32
	}
	heads := map[string]*head{}
	byCommand := map[string][]string{} // command_id → receipt ids
	byReceipt := map[string]events.Receipt{}
	bad := 0
	fail := func(format string, args ...any) {
		bad++
		if bad <= 20 {
			t.Errorf(format, args...)
		}
	}
	for _, rec := range recs {
		where := fmt.Sprintf("%s/%d@%d", topicEvents, rec.Partition, rec.Offset)
		env, err := events.ParseEnvelope(rec.Value)
		if err != nil {
			fail("%s: %v", where, err)
			continue
		}
		if err := env.Verify(keys); err != nil {
			fail("%s: %v", where, err)
		}
		r, err := events.ParseReceipt(env.Payload)
		if err != nil {
			fail("%s: %v", where, err)
			continue
		}
		h := heads[r.Tenant]
		if h == nil {
			h = &head{hash: "sha256:" + strings.Repeat("0", 64), partition: rec.Partition}
			heads[r.Tenant] = h
		}
		if h.partition != rec.Partition {
			fail("%s: tenant %s also has receipts in partition %d", where, r.Tenant, h.partition)
		}
		if r.Seq != h.seq+1 {
			fail("%s: tenant %s seq %d follows seq %d (gap or duplicate)", where, r.Tenant, r.Seq, h.seq)
		}
		if r.PrevHash != h.hash {
			fail("%s: tenant %s seq %d prev_hash %s, want %s", where, r.Tenant, r.Seq, r.PrevHash, h.hash)
		}
		sum := sha256.Sum256(env.Payload)
		h.seq, h.hash = r.Seq, "sha256:"+hex.EncodeToString(sum[:])
		byCommand[r.CommandID] = append(byCommand[r.CommandID], r.ID)
		if _, dup := byReceipt[r.ID]; dup {
			fail("%s: receipt id %s appears twice", where, r.ID)
		}
		byReceipt[r.ID] = r
	}
	for cmd, ids := range byCommand {
		if len(ids) != 1 {
			fail("command %s has %d receipts: %v", cmd, len(ids), ids)
		}
	}
	sent := map[string]bool{}
	denies := 0
	for _, q := range reqs {
		if !q.acked {
			fail("request %s never got 201", q.key)
			continue
		}
		sent[q.commandID] = true
		r, ok := byReceipt[q.receiptID]
		switch {
		case !ok:
			fail("acknowledged receipt %s (request %s, %s seq %d) is missing from the log", q.receiptID, q.key, q.tenant, q.seq)
		case r.CommandID != q.commandID || r.Tenant != q.tenant || r.Seq != q.seq || r.Decision != q.decision:
			fail("receipt %s in the log is command %s %s seq %d %s; the client was told command %s %s seq %d %s",
				q.receiptID, r.CommandID, r.Tenant, r.Seq, r.Decision, q.commandID, q.tenant, q.seq, q.decision)
		}
		if q.decision == events.DecisionDeny {
			denies++
		}
	}
	for cmd := range byCommand {
		if !sent[cmd] {
			fail("the log has a receipt for command %s that no client sent", cmd)
		}
	}
	if len(byReceipt) != len(reqs) {
		fail("the log has %d receipts for %d distinct commands", len(byReceipt), len(reqs))
	}
	var summary []string
	for tenant, h := range heads {
		summary = append(summary, fmt.Sprintf("%s: seq 1..%d (partition %d)", tenant, h.seq, h.partition))
	}
	sort.Strings(summary)
	if bad > 20 {
		t.Errorf("… and %d more problems", bad-20)
	}
	t.Logf("log: %d receipts (%d fail-closed timeout denies), %s", len(recs), denies, strings.Join(summary, "; "))
}
