package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/companyos/companyos/internal/stores"
)

// binary is the companyos binary TestMain builds once for every test.
var binary string

// moduleRoot is the directory holding go.mod.
var moduleRoot string

const (
	readyTimeout = 60 * time.Second
	topicEvents  = "companyos.events.v1"
)

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	gomod := strings.TrimSpace(string(out))
	if err != nil || gomod == "" || gomod == os.DevNull {
		fmt.Fprintf(os.Stderr, "e2e: cannot find the module root with `go env GOMOD` (got %q): %v\n", gomod, err)
		return 1
	}
	moduleRoot = filepath.Dir(gomod)
	dir, err := os.MkdirTemp("", "companyos-e2e-bin-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)
	binary = filepath.Join(dir, "companyos")
	start := time.Now()
	build := exec.Command("go", "build", "-o", binary, "./cmd/companyos")
	build.Dir = moduleRoot
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: go build ./cmd/companyos failed: %v\n%s", err, out)
		return 1
	}
	fmt.Fprintf(os.Stderr, "e2e: built %s in %s\n", binary, time.Since(start).Round(time.Millisecond))
	return m.Run()
}

// freeAddr returns a loopback host:port that was free a moment ago.
func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("pick a free port: %v", err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

// childEnv is the environment of a companyos subprocess: ours without any
// COMPANYOS_* variable, so the flags the test passes are the whole config.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "COMPANYOS_") {
			env = append(env, kv)
		}
	}
	return env
}

// lockedBuffer collects a subprocess's output.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// tail returns the last n bytes of s.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

// runCLI runs the binary to completion and returns its exit code and output.
func runCLI(t testing.TB, timeout time.Duration, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = childEnv()
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		code = exit.ExitCode()
	default:
		t.Fatalf("companyos %s: %v\nstderr:\n%s", strings.Join(args, " "), err, e.String())
	}
	if ctx.Err() != nil {
		t.Fatalf("companyos %s: did not finish within %s\nstderr:\n%s", strings.Join(args, " "), timeout, e.String())
	}
	return code, o.String(), e.String()
}

// proc is one incarnation of a server process.
type proc struct {
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{}
	err  error // Wait's result, set before done is closed
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// server runs `companyos dev` or `companyos serve` as a subprocess; it can be
// killed and restarted with the same command line (same data dir and ports).
type server struct {
	t    *testing.T
	args []string

	DataDir     string
	HTTPAddr    string
	MetricsAddr string
	KafkaAddr   string // the embedded broker (dev) or the external one (serve)
	// AdminToken is <data-dir>/admin.token (dev only).
	AdminToken string

	cur *proc
	all []*proc
}

// storeArgs creates a fresh Postgres database and ClickHouse database for t
// and returns the flags that point the binary at them.
func storeArgs(t *testing.T) []string {
	t.Helper()
	pgDSN := stores.TestPostgres(t)
	chAddr, chDB := stores.TestClickHouse(t)
	return []string{"--pg-dsn=" + pgDSN, "--clickhouse-addr=" + chAddr, "--clickhouse-database=" + chDB}
}

// startDev starts `companyos dev` on free loopback ports with a temp data dir
// and fresh databases, and waits until it is ready.
func startDev(t *testing.T, extra ...string) *server {
	t.Helper()
	s := &server{t: t, DataDir: t.TempDir(), HTTPAddr: freeAddr(t), MetricsAddr: freeAddr(t), KafkaAddr: freeAddr(t)}
	s.args = append([]string{"dev",
		"--data-dir=" + s.DataDir,
		"--http-addr=" + s.HTTPAddr,
		"--metrics-addr=" + s.MetricsAddr,
		"--kafka-addr=" + s.KafkaAddr,
		"--shutdown-grace=5s",
	}, storeArgs(t)...)
	s.args = append(s.args, extra...)
	s.register()
	s.start()
	raw, err := os.ReadFile(filepath.Join(s.DataDir, "admin.token"))
	if err != nil {
		t.Fatalf("dev mode wrote no admin token: %v", err)
	}
	s.AdminToken = strings.TrimSpace(string(raw))
	if s.AdminToken == "" {
		t.Fatalf("%s/admin.token is empty", s.DataDir)
	}
	return s
}

// register makes sure the process is stopped (and its output shown when the
// test failed) before the test's databases are dropped.
func (s *server) register() {
	s.t.Cleanup(func() {
		if s.cur != nil && !s.cur.exited() {
			_ = s.cur.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-s.cur.done:
				if s.cur.err != nil {
					s.t.Errorf("companyos %s did not stop cleanly on SIGTERM: %v", s.args[0], s.cur.err)
				}
			case <-time.After(15 * time.Second):
				_ = s.cur.cmd.Process.Kill()
				<-s.cur.done
				s.t.Errorf("companyos %s did not stop within 15s of SIGTERM", s.args[0])
			}
		}
		if s.t.Failed() {
			for i, p := range s.all {
				s.t.Logf("---- companyos %s, incarnation %d, output (tail) ----\n%s", s.args[0], i+1, tail(p.out.String(), 6000))
			}
		}
	})
}

// start launches a new incarnation and waits for GET /healthz/ready = 200.
func (s *server) start() {
	s.t.Helper()
	p := &proc{out: &lockedBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(binary, s.args...)
	p.cmd.Env = childEnv()
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		s.t.Fatalf("start companyos: %v", err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	s.cur = p
	s.all = append(s.all, p)
	s.waitReady(p)
}

func (s *server) waitReady(p *proc) {
	s.t.Helper()
	start := time.Now()
	client := &http.Client{Timeout: 3 * time.Second}
	url := "http://" + s.MetricsAddr + "/healthz/ready"
	last := "no answer yet"
	for time.Since(start) < readyTimeout {
		if p.exited() {
			s.t.Fatalf("companyos %s exited before it was ready (%v); output:\n%s", s.args[0], p.err, p.out.String())
		}
		resp, err := client.Get(url)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				s.t.Logf("companyos %s ready after %s", s.args[0], time.Since(start).Round(time.Millisecond))
				return
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, bytes.TrimSpace(body))
		} else {
			last = err.Error()
		}
		time.Sleep(100 * time.Millisecond)
	}
	_ = p.cmd.Process.Kill()
	<-p.done
	s.t.Fatalf("companyos %s not ready after %s (last: %s); output:\n%s", s.args[0], readyTimeout, last, p.out.String())
}

// kill SIGKILLs the current incarnation and waits for it to be gone.
func (s *server) kill() {
	s.t.Helper()
	if err := s.cur.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		s.t.Fatalf("SIGKILL companyos: %v", err)
	}
	select {
	case <-s.cur.done:
	case <-time.After(10 * time.Second):
		s.t.Fatalf("companyos did not die within 10s of SIGKILL")
	}
}

func (s *server) url(path string) string { return "http://" + s.HTTPAddr + path }

// cmdResult is the outcome of one POST /v1/commands.
type cmdResult struct {
	Status   int    `json:"-"`
	Replayed bool   `json:"-"` // header Idempotent-Replayed: true
	Body     []byte `json:"-"`
	// From a 201 body, or from a problem body (receipt_id, command_id, seq).
	ReceiptID string          `json:"receipt_id"`
	CommandID string          `json:"command_id"`
	Decision  string          `json:"decision"`
	Seq       uint64          `json:"seq"`
	Rationale json.RawMessage `json:"rationale"`
}

// postCommand sends one command; err is set only when no HTTP response
// arrived (the outcome is unknown).
func (s *server) postCommand(ctx context.Context, client *http.Client, token, idemKey string, body []byte) (cmdResult, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url("/v1/commands"), bytes.NewReader(body))
	if err != nil {
		return cmdResult{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	if idemKey != "" {
		req.Header.Set("Idempotency-Key", idemKey)
	}
	resp, err := client.Do(req)
	if err != nil {
		return cmdResult{}, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return cmdResult{}, fmt.Errorf("reading the %d response: %w", resp.StatusCode, err)
	}
	res := cmdResult{Status: resp.StatusCode, Replayed: resp.Header.Get("Idempotent-Replayed") == "true", Body: raw}
	if err := json.Unmarshal(raw, &res); err != nil {
		return cmdResult{}, fmt.Errorf("decoding the %d response %q: %w", resp.StatusCode, raw, err)
	}
	return res, nil
}

// mustPost sends a command that must get wantStatus.
func (s *server) mustPost(token, idemKey, body string, wantStatus int) cmdResult {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := s.postCommand(ctx, http.DefaultClient, token, idemKey, []byte(body))
	if err != nil {
		s.t.Fatalf("POST /v1/commands %s: %v", body, err)
	}
	if res.Status != wantStatus {
		s.t.Fatalf("POST /v1/commands %s: status %d, want %d; body: %s", body, res.Status, wantStatus, res.Body)
	}
	return res
}

// get GETs path from the API (no auth) and returns the body of a 200.
func (s *server) get(path string) []byte {
	s.t.Helper()
	resp, err := http.Get(s.url(path))
	if err != nil {
		s.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		s.t.Fatalf("GET %s: status %d, err %v, body %s", path, resp.StatusCode, err, raw)
	}
	return raw
}

// logRecord is one record of companyos.events.v1.
type logRecord struct {
	Partition int32
	Offset    int64
	Value     []byte
}

// readEvents reads every committed record of companyos.events.v1, from the
// log start up to each partition's last stable offset, with read_committed
// Fetch requests through a franz-go client. Records come back in partition
// order.
//
// It drives the fetches itself instead of using a consuming kgo.Client
// because a consumer cannot tell when it has caught up: it skips aborted
// batches without returning them, and after a crash the embedded broker
// (kfake) aborts the open transaction without writing an abort marker, so a
// partition can end with records that are never returned and offsets that
// "last returned record + 1" never reaches. kgo.ProcessFetchPartition applies
// the same read_committed filtering and reports the position past them.
func readEvents(t testing.TB, brokers ...string) []logRecord {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatalf("kafka client: %v", err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	topics, err := adm.ListTopics(ctx, topicEvents)
	if err != nil || topics[topicEvents].Err != nil {
		t.Fatalf("describe %s: %v %v", topicEvents, err, topics[topicEvents].Err)
	}
	topicID := topics[topicEvents].ID
	starts, err := adm.ListStartOffsets(ctx, topicEvents)
	if err != nil {
		t.Fatalf("list start offsets of %s: %v", topicEvents, err)
	}
	ends, err := adm.ListCommittedOffsets(ctx, topicEvents) // last stable offsets
	if err != nil {
		t.Fatalf("list end offsets of %s: %v", topicEvents, err)
	}
	next, target := map[int32]int64{}, map[int32]int64{}
	ends.Each(func(o kadm.ListedOffset) {
		s, _ := starts.Lookup(topicEvents, o.Partition)
		if o.Err != nil || s.Err != nil {
			t.Fatalf("offsets of %s/%d: %v %v", topicEvents, o.Partition, o.Err, s.Err)
		}
		next[o.Partition], target[o.Partition] = s.Offset, o.Offset
	})
	if len(target) == 0 {
		t.Fatalf("topic %s has no partitions", topicEvents)
	}
	byPart := map[int32][]logRecord{}
	for {
		req := kmsg.NewPtrFetchRequest()
		req.ReplicaID = -1
		req.MaxWaitMillis = 100
		req.MinBytes = 1
		req.MaxBytes = 32 << 20
		req.IsolationLevel = 1 // read_committed
		req.SessionEpoch = -1  // a full fetch, no fetch session
		rt := kmsg.NewFetchRequestTopic()
		rt.Topic, rt.TopicID = topicEvents, topicID
		for p, end := range target {
			if next[p] >= end {
				continue
			}
			rp := kmsg.NewFetchRequestTopicPartition()
			rp.Partition, rp.FetchOffset, rp.PartitionMaxBytes = p, next[p], 8<<20
			rp.CurrentLeaderEpoch, rp.LastFetchedEpoch, rp.LogStartOffset = -1, -1, -1
			rt.Partitions = append(rt.Partitions, rp)
		}
		if len(rt.Partitions) == 0 {
			break
		}
		req.Topics = append(req.Topics, rt)
		resp, err := req.RequestWith(ctx, cl)
		if err != nil {
			t.Fatalf("fetch %s (at %v, want %v): %v", topicEvents, next, target, err)
		}
		if err := kerr.ErrorForCode(resp.ErrorCode); err != nil {
			t.Fatalf("fetch %s: %v", topicEvents, err)
		}
		for _, topic := range resp.Topics {
			for i := range topic.Partitions {
				rp := &topic.Partitions[i]
				fp, after := kgo.ProcessFetchPartition(kgo.ProcessFetchPartitionOpts{
					Offset: next[rp.Partition], IsolationLevel: kgo.ReadCommitted(), Topic: topicEvents, Partition: rp.Partition,
				}, rp, kgo.DefaultDecompressor(), nil)
				if fp.Err != nil {
					t.Fatalf("fetch %s/%d at %d: %v", topicEvents, rp.Partition, next[rp.Partition], fp.Err)
				}
				for _, r := range fp.Records {
					if r.Offset < target[rp.Partition] {
						byPart[rp.Partition] = append(byPart[rp.Partition], logRecord{Partition: r.Partition, Offset: r.Offset, Value: r.Value})
					}
				}
				next[rp.Partition] = after
			}
		}
	}
	var out []logRecord
	for p := int32(0); p < int32(len(target)); p++ {
		out = append(out, byPart[p]...)
	}
	return out
}
