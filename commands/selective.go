package commands

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sort"

	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/internal/httpx"
	"github.com/companyos/companyos/internal/keystore"
)

// SubjectKeys hands out per-subject data keys (internal/keystore.Store).
type SubjectKeys interface {
	Key(ctx context.Context, tenant, subject string) (keystore.Key, error)
}

// sealed is the outcome of redacting one command's selective attributes.
type sealed struct {
	command     json.RawMessage   // the command as the receipt carries it
	commitments map[string]string // field → commitment (receipt.selective)
	disclosures *events.DisclosureSet
}

// errKeystore marks keystore failures: the command is answered 503 and not
// decided, since a value it cannot seal must not be receipted.
var errKeystore = errors.New("keystore unavailable")

// selectiveFields is the sorted set of attributes of payload that must be
// committed instead of stored: those the command names plus the configured
// defaults that it sets to a value.
func selectiveFields(payload any, defaults []string) (subject string, attrs map[string]any, fields []string) {
	var named []string
	switch p := payload.(type) {
	case *EntityCreate:
		subject, attrs, named = p.ID, p.Attrs, p.Selective
	case *EntityUpdate:
		subject, attrs, named = p.ID, p.Attrs, p.Selective
	default:
		return "", nil, nil
	}
	set := map[string]bool{}
	for _, n := range named {
		set[n] = true
	}
	for _, n := range defaults {
		if v, ok := attrs[n]; ok && v != nil {
			set[n] = true
		}
	}
	for n := range set {
		fields = append(fields, n)
	}
	sort.Strings(fields)
	return subject, attrs, fields
}

// sealSelective replaces every selective attribute value of payload (in
// place) with its commitment reference, re-encodes the raw command to match,
// and seals the values under the subject's key. Without selective fields
// the raw command is returned untouched (exact bytes as submitted).
func (p *Processor) sealSelective(ctx context.Context, tenant, commandID, receiptID string, raw json.RawMessage, payload any) (sealed, *httpx.Problem, error) {
	subject, attrs, fields := selectiveFields(payload, p.cfg.SelectiveAttrs)
	if len(fields) == 0 {
		return sealed{command: raw, commitments: map[string]string{}}, nil, nil
	}
	if p.cfg.SubjectKeys == nil {
		pr := httpx.NewProblem(http.StatusUnprocessableEntity, "validation",
			"selective attributes need the keystore, which this processor is not configured with")
		pr.Errors = []httpx.FieldError{{Field: "payload.selective", Detail: "selective disclosure is not configured"}}
		return sealed{}, pr, nil
	}
	key, err := p.cfg.SubjectKeys.Key(ctx, tenant, subject)
	if err != nil {
		return sealed{}, nil, fmt.Errorf("%w: %v", errKeystore, err)
	}
	out := sealed{commitments: map[string]string{}, disclosures: &events.DisclosureSet{
		Tenant: tenant, Subject: subject, KeyID: key.ID, Fields: map[string]events.SealedValue{},
	}}
	for _, f := range fields {
		value, err := events.CanonicalValue(attrs[f])
		if err != nil {
			return sealed{}, nil, fmt.Errorf("selective %s: %w", f, err)
		}
		salt := events.DeriveSalt(key.Bytes, commandID, f)
		c := events.Commit(f, salt, value)
		sv, err := events.Seal(key.Bytes, receiptID, events.Disclosure{Field: f, Salt: salt, Value: value})
		if err != nil {
			return sealed{}, nil, err
		}
		out.commitments[f] = c
		out.disclosures.Fields[f] = sv
		attrs[f] = map[string]any{"$selective": c}
	}
	// Re-encode the command with the references in place of the values. The
	// encoding is canonical (sorted keys), and the salts are derived from the
	// subject key and command id, so a retry yields identical bytes and the
	// idempotency body-hash comparison still works.
	var doc map[string]any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&doc); err != nil {
		return sealed{}, nil, fmt.Errorf("selective: re-decode command: %w", err)
	}
	pl, _ := doc["payload"].(map[string]any)
	docAttrs, _ := pl["attrs"].(map[string]any)
	if docAttrs == nil {
		return sealed{}, nil, errors.New("selective: command has no payload.attrs")
	}
	for _, f := range fields {
		docAttrs[f] = attrs[f]
	}
	if sel, ok := pl["selective"].([]any); ok {
		// Normalise the list so its order does not change the bytes.
		names := make([]string, 0, len(sel))
		for _, v := range sel {
			if s, ok := v.(string); ok {
				names = append(names, s)
			}
		}
		slices.Sort(names)
		pl["selective"] = names
	}
	out.command, err = events.CanonicalValue(doc)
	if err != nil {
		return sealed{}, nil, err
	}
	return out, nil, nil
}
