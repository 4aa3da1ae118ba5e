package commands

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sort"
	"time"

	"github.com/companyos/companyos/events"
)

// Outcome is what the processor remembers of a decided command, so that a
// retried command (same command id) gets the original answer and appends
// nothing.
type Outcome struct {
	CommandID string `json:"command_id"`
	ReceiptID string `json:"receipt_id"`
	Decision  string `json:"decision"`
	Seq       uint64 `json:"seq"`
	Version   uint64 `json:"version,omitempty"`
	// BodyHash is the receipt's evidence_hash: the hash of the command bytes.
	BodyHash string `json:"body_hash"`
	// Rationale is kept for replaying a deny.
	Rationale json.RawMessage `json:"rationale,omitempty"`
}

// Status is the HTTP status of the outcome.
func (o Outcome) Status() int {
	if o.Decision == events.DecisionAllow {
		return http.StatusCreated
	}
	return http.StatusForbidden
}

// TenantState is everything the processor needs to decide a tenant's next
// command. It is rebuilt from the tenant's receipts and never read by
// anything but the processor goroutine that owns the tenant's partition.
type TenantState struct {
	Tenant    string
	Chain     events.Chain
	Entities  map[string]*events.Entity
	Relations map[events.Relation]struct{}
	// touching indexes relations by both endpoints.
	touching map[string]map[events.Relation]struct{}
	Commands map[string]Outcome
	// Approvals are the granted, not yet consumed approvals by receipt id
	// (expired ones are ignored when deciding, and dropped on use).
	Approvals map[string]events.Approval
	// selective indexes, per subject, the receipts that committed selective
	// values and their fields: the purge planner's input.
	selective map[string][]selectiveRef
}

// selectiveRef is one receipt holding selective values of a subject.
type selectiveRef struct {
	events.PurgedSelective
	evidence string // the receipt's evidence_hash
}

// NewTenantState is the state of a tenant with no receipts.
func NewTenantState(tenant string) *TenantState {
	return &TenantState{
		Tenant:    tenant,
		Chain:     events.NewChain(),
		Entities:  map[string]*events.Entity{},
		Relations: map[events.Relation]struct{}{},
		touching:  map[string]map[events.Relation]struct{}{},
		Commands:  map[string]Outcome{},
		Approvals: map[string]events.Approval{},
		selective: map[string][]selectiveRef{},
	}
}

// Entity returns a live (not deleted) entity.
func (s *TenantState) Entity(id string) (*events.Entity, bool) {
	e, ok := s.Entities[id]
	if !ok || e.Deleted {
		return nil, false
	}
	return e, true
}

// RelationsOf returns the relations that touch id, in no particular order.
func (s *TenantState) RelationsOf(id string) []events.Relation {
	out := make([]events.Relation, 0, len(s.touching[id]))
	for r := range s.touching[id] {
		out = append(out, r)
	}
	return out
}

// ApplyChange mutates the state by an allowed receipt's change.
func (s *TenantState) ApplyChange(c *events.Change) error {
	if c == nil {
		return nil
	}
	switch c.Op {
	case events.OpEntityPut, events.OpEntityDelete:
		if c.Entity == nil {
			return fmt.Errorf("commands: change %s without entity", c.Op)
		}
		for _, r := range c.Unlinked {
			s.unlink(r)
		}
		e := *c.Entity
		e.Attrs = maps.Clone(e.Attrs)
		s.Entities[e.ID] = &e
		for _, id := range c.Consumed {
			delete(s.Approvals, id)
		}
	case events.OpRelationLink:
		if c.Relation == nil {
			return fmt.Errorf("commands: change %s without relation", c.Op)
		}
		r := *c.Relation
		s.Relations[r] = struct{}{}
		for _, id := range []string{r.From, r.To} {
			m := s.touching[id]
			if m == nil {
				m = map[events.Relation]struct{}{}
				s.touching[id] = m
			}
			m[r] = struct{}{}
		}
	case events.OpRelationUnlink:
		if c.Relation == nil {
			return fmt.Errorf("commands: change %s without relation", c.Op)
		}
		s.unlink(*c.Relation)
	case events.OpApprovalGrant:
		if c.Approval == nil {
			return fmt.Errorf("commands: change %s without approval", c.Op)
		}
		s.Approvals[c.Approval.ID] = *c.Approval
	case events.OpPurge:
		if c.Purge == nil {
			return fmt.Errorf("commands: change %s without purge", c.Op)
		}
		if e, ok := s.Entities[c.Purge.Subject]; ok {
			e.Attrs = map[string]any{}
		}
		delete(s.selective, c.Purge.Subject)
	default:
		return fmt.Errorf("commands: unknown change op %q", c.Op)
	}
	return nil
}

func (s *TenantState) unlink(r events.Relation) {
	delete(s.Relations, r)
	for _, id := range []string{r.From, r.To} {
		if m := s.touching[id]; m != nil {
			delete(m, r)
			if len(m) == 0 {
				delete(s.touching, id)
			}
		}
	}
}

// applyOwn folds a receipt whose change is already decoded (the processor's
// own receipts keep it in hand; ApplyReceipt decodes it from the log).
func (s *TenantState) applyOwn(r events.Receipt, payload []byte, c *events.Change) error {
	if err := s.Chain.Append(r, payload); err != nil {
		return err
	}
	version := uint64(0)
	if c != nil {
		if err := s.ApplyChange(c); err != nil {
			return err
		}
		if c.Entity != nil {
			version = c.Entity.Version
		}
	}
	if len(r.Selective) > 0 && r.Decision == events.DecisionAllow && r.Subject != "" {
		s.selective[r.Subject] = append(s.selective[r.Subject], selectiveRef{
			PurgedSelective: events.PurgedSelective{Receipt: r.ID, Fields: slices.Sorted(maps.Keys(r.Selective))}, evidence: r.EvidenceHash})
	}
	o := Outcome{CommandID: r.CommandID, ReceiptID: r.ID, Decision: r.Decision, Seq: r.Seq, Version: version, BodyHash: r.EvidenceHash}
	if r.Decision == events.DecisionDeny {
		o.Rationale = r.Rationale
	}
	s.Commands[r.CommandID] = o
	return nil
}

// ApplyReceipt folds one receipt (as read back from the log) into the state:
// it checks the hash chain, applies an allowed change and remembers the
// command's outcome.
func (s *TenantState) ApplyReceipt(r events.Receipt, payload []byte) error {
	c, err := r.StateChange()
	if err != nil {
		return err
	}
	if err := s.applyOwn(r, payload, c); err != nil {
		return fmt.Errorf("commands: receipt %s: %w", r.ID, err)
	}
	return nil
}

// ValidApprovals returns the approvals of (action, resource, requester) not
// yet expired at now, oldest first. Whether they suffice (distinct, eligible
// approvers other than the requester) is the policy's call.
func (s *TenantState) ValidApprovals(action, resource, requester string, now time.Time) []events.Approval {
	var out []events.Approval
	for _, a := range s.Approvals {
		if a.Action == action && a.Resource == resource && a.Requester == requester && now.Before(a.ExpiresAt) {
			out = append(out, a)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].GrantedAt.Equal(out[j].GrantedAt) {
			return out[i].GrantedAt.Before(out[j].GrantedAt)
		}
		return out[i].ID < out[j].ID
	})
	return out
}
