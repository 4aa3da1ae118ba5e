package events

import (
	"bytes"
	"encoding/json"
	"fmt"
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
)

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
