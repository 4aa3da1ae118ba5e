package commands

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"strings"
	"testing/fstest"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/internal/httpx"
	"github.com/companyos/companyos/internal/keyfile"
	"github.com/companyos/companyos/policy"
)

// BundleUpdate is a record of policy.bundle.updates: a published bundle and
// the signed receipt that published it. Followers (policy.Reloader) verify
// the receipt's signature and that its command carries exactly these files
// before loading them, so the topic is not a way around policy.
type BundleUpdate struct {
	Version  string            `json:"version"`
	Hash     string            `json:"hash"`
	Files    map[string]string `json:"files"`
	Envelope json.RawMessage   `json:"envelope"` // the policy.bundle.publish receipt
}

// checkBundle compiles the candidate bundle and runs its tests; a bundle
// that fails is refused (422 listing the errors) and nothing is appended.
func (p *Processor) checkBundle(ctx context.Context, pl *PolicyPublish) *httpx.Problem {
	_, err := policy.New(ctx, policy.Config{Bundle: BundleFS(pl.Files)})
	if err == nil {
		return nil
	}
	pr := httpx.NewProblem(http.StatusUnprocessableEntity, "invalid-bundle", "the policy bundle does not compile or its tests fail; nothing was published")
	for _, line := range strings.Split(err.Error(), "\n") {
		if line = strings.TrimSpace(line); line != "" {
			pr.Errors = append(pr.Errors, httpx.FieldError{Field: "payload.files", Detail: line})
		}
	}
	if !errors.Is(err, policy.ErrInvalidBundle) {
		pr.Errors = append(pr.Errors, httpx.FieldError{Field: "payload.files", Detail: err.Error()})
	}
	return pr
}

// BundleFS is a bundle's files as an fs.FS.
func BundleFS(files map[string]string) fstest.MapFS {
	m := fstest.MapFS{}
	for name, content := range files {
		m[name] = &fstest.MapFile{Data: []byte(content), Mode: 0o644}
	}
	return m
}

// bundleUpdate is the policy.bundle.updates record of an allowed publish,
// produced in the same transaction as its receipt.
func (p *Processor) bundleUpdate(r events.Receipt, envelope []byte, pl *PolicyPublish) *kgo.Record {
	e, err := policy.New(context.Background(), policy.Config{Bundle: BundleFS(pl.Files)})
	u := BundleUpdate{Files: pl.Files, Envelope: envelope}
	if err == nil {
		u.Version, u.Hash = e.Version(), e.Hash()
	}
	b, _ := json.Marshal(u)
	return &kgo.Record{Topic: events.TopicPolicyUpdates, Partition: 0, Key: []byte("bundle"), Value: b,
		Headers: []kgo.RecordHeader{{Key: "receipt_id", Value: []byte(r.ID)}, {Key: "tenant", Value: []byte(r.Tenant)}}}
}

// FollowBundles keeps r on the latest published policy bundle. It reads
// policy.bundle.updates from the start, verifies each update (the publish
// receipt's signature with keys, an allowed policy.bundle.publish whose
// signed command carries exactly the update's files), loads it and swaps it
// in; caughtUp is called once the topic's end was reached, so a starting
// process decides nothing with a stale bundle. It returns when ctx ends.
func FollowBundles(ctx context.Context, brokers []string, keys keyfile.KeySet, r *policy.Reloadable, log *slog.Logger, caughtUp func()) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		return fmt.Errorf("policy updates: client: %w", err)
	}
	defer cl.Close()
	signaled := false
	err = events.Follow(ctx, cl, events.TopicPolicyUpdates, map[int32]int64{0: 0}, 500*time.Millisecond, func(b events.Batch) error {
		for _, rec := range b.Records {
			e, err := VerifyBundleUpdate(ctx, rec.Value, keys)
			if err != nil {
				log.Error("policy bundle update refused", "offset", rec.Offset, "err", err)
				continue
			}
			if old := r.Engine(); old.Hash() == e.Hash() {
				continue
			}
			r.Swap(e)
			log.Info("policy bundle hot-reloaded", "version", e.Version(), "offset", rec.Offset)
		}
		if !signaled && b.Next >= b.Stable {
			signaled = true
			if caughtUp != nil {
				caughtUp()
			}
		}
		return nil
	})
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// VerifyBundleUpdate checks an update record and loads its bundle.
func VerifyBundleUpdate(ctx context.Context, value []byte, keys keyfile.KeySet) (*policy.Engine, error) {
	var u BundleUpdate
	if err := json.Unmarshal(value, &u); err != nil {
		return nil, fmt.Errorf("malformed update: %w", err)
	}
	env, err := events.ParseEnvelope(u.Envelope)
	if err != nil {
		return nil, err
	}
	if err := env.Verify(keys); err != nil {
		return nil, err
	}
	rc, err := events.ParseReceipt(env.Payload)
	if err != nil {
		return nil, err
	}
	if rc.Action != TypePolicyPublish || rc.Decision != events.DecisionAllow {
		return nil, fmt.Errorf("receipt %s is a %s %s, not an allowed %s", rc.ID, rc.Decision, rc.Action, TypePolicyPublish)
	}
	var cmd struct {
		Payload PolicyPublish `json:"payload"`
	}
	if err := json.Unmarshal(rc.Command, &cmd); err != nil {
		return nil, fmt.Errorf("receipt %s: command: %w", rc.ID, err)
	}
	if !maps.Equal(cmd.Payload.Files, u.Files) {
		return nil, fmt.Errorf("receipt %s: the update's files differ from the signed command's", rc.ID)
	}
	e, err := policy.New(ctx, policy.Config{Bundle: BundleFS(u.Files)})
	if err != nil {
		return nil, fmt.Errorf("receipt %s: %w", rc.ID, err)
	}
	return e, nil
}
