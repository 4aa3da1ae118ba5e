package events

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"
)

// Entity is a node of the company graph as a receipt's change records it:
// the full state after the command, so a projection never needs history.
type Entity struct {
	ID      string         `json:"id"`
	Kind    string         `json:"kind"`
	Attrs   map[string]any `json:"attrs"`
	Version uint64         `json:"version"`
	Deleted bool           `json:"deleted,omitempty"`
}

// Relation is a typed, directed edge.
type Relation struct {
	From string `json:"from"`
	Rel  string `json:"rel"`
	To   string `json:"to"`
}

// Change operations.
const (
	OpEntityPut      = "entity.put"
	OpEntityDelete   = "entity.delete"
	OpRelationLink   = "relation.link"
	OpRelationUnlink = "relation.unlink"
	// OpApprovalGrant records an approval (dual control); it changes no
	// entity. OpPurge is a purge manifest: the subject's remaining data is
	// erased from every read model and its selective keys are destroyed.
	OpApprovalGrant = "approval.grant"
	OpPurge         = "purge"
)

// Approval is one approver's consent that Requester may perform Action on
// Resource until ExpiresAt. ID is the approval's receipt id.
type Approval struct {
	ID            string    `json:"id"`
	Approver      string    `json:"approver"`
	ApproverRoles []string  `json:"approver_roles"`
	Action        string    `json:"action"`
	Resource      string    `json:"resource"`
	Requester     string    `json:"requester"`
	Justification string    `json:"justification,omitempty"`
	GrantedAt     time.Time `json:"granted_at"`
	ExpiresAt     time.Time `json:"expires_at"`
}

// Purge is a purge manifest: everything erased because Subject was deleted
// under dual control. It is computed by the processor's purge planner and
// signed like every receipt; values it erases stay provable as commitments.
type Purge struct {
	Subject string `json:"subject"`
	// DeleteReceipt is the entity.delete receipt that ordered the purge;
	// Requester made it and Approvals (receipt ids) allowed it.
	DeleteReceipt string   `json:"delete_receipt"`
	Requester     string   `json:"requester"`
	Approvals     []string `json:"approvals"`
	// Relations removed with the entity.
	Relations []Relation `json:"relations"`
	// Selective lists receipts that committed selective values of the
	// subject, with the fields, whose values are now unrecoverable.
	Selective []PurgedSelective `json:"selective"`
	// ShreddedKeys are the subject's data keys destroyed (key ids).
	ShreddedKeys []int64 `json:"shredded_keys"`
	// Evidence lists evidence blobs (hashes) of the subject's receipts that
	// the evidence store deletes.
	Evidence []string `json:"evidence"`
}

// PurgedSelective is one receipt's erased selective fields.
type PurgedSelective struct {
	Receipt string   `json:"receipt"`
	Fields  []string `json:"fields"`
}

// Change is the state change an allowed receipt applies.
//   - entity.put: Entity is the entity after create/update.
//   - entity.delete: Entity is the tombstone (Deleted, last attributes,
//     bumped version); Unlinked lists relations removed with it (cascade).
//   - relation.link / relation.unlink: Relation.
type Change struct {
	Op       string     `json:"op"`
	Entity   *Entity    `json:"entity,omitempty"`
	Relation *Relation  `json:"relation,omitempty"`
	Unlinked []Relation `json:"unlinked,omitempty"`
	// Approval is set for approval.grant; Consumed lists the approvals (ids)
	// an entity.delete used up.
	Approval *Approval `json:"approval,omitempty"`
	Consumed []string  `json:"consumed_approvals,omitempty"`
	// Purge is set for purge.
	Purge *Purge `json:"purge,omitempty"`
}

// StateChange decodes the change an allowed receipt applies; it is nil for a
// deny (or a receipt without one). Numbers stay json.Number, so attribute
// values round-trip exactly.
func (r Receipt) StateChange() (*Change, error) {
	if r.Decision != DecisionAllow || len(r.Change) == 0 || string(r.Change) == "null" {
		return nil, nil
	}
	var c Change
	dec := json.NewDecoder(bytes.NewReader(r.Change))
	dec.UseNumber()
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("events: receipt %s: change: %w", r.ID, err)
	}
	return &c, nil
}
