package graph

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/companyos/companyos/events"
)

// noNode is an index that names no node.
const noNode = math.MaxUint32

// edge is one adjacency entry. In out[n] peer is the edge's "to"; in in[n]
// it is the edge's "from". rel indexes Graph.rels.
type edge struct {
	peer uint32
	rel  uint16
}

type node struct {
	id      string
	kind    string // interned
	attrs   map[string]any
	version uint64
	// known is set once an entity.put or entity.delete named the node; a
	// node that is not known is a stub: only an endpoint of some relation.
	known   bool
	deleted bool
}

func (n *node) live() bool { return n.known && !n.deleted }

// Graph is one tenant's company graph. Node ids are interned to dense
// uint32 indexes that are never reused (a deleted node keeps its index as a
// tombstone, so a stale put cannot resurrect it); relation types are
// interned to uint16. Adjacency is kept in both directions as slices.
//
// All methods are safe for concurrent use; see the package comment for the
// single-writer, many-readers model.
type Graph struct {
	tenant string

	mu       sync.RWMutex
	index    map[string]uint32
	nodes    []node
	out, in  [][]edge
	rels     []string
	relIndex map[string]uint16
	relCount []int
	kinds    map[string]string // interning table for node kinds
	byKind   map[string]int    // live nodes per kind
	live     int
	deleted  int
	edges    int

	// applied is the seq of the last receipt applied through Tenants.Apply.
	// It is written under mu, so a reader that sees seq N and then takes the
	// read lock sees every change up to N.
	applied atomic.Uint64
}

// NewGraph returns an empty graph for tenant.
func NewGraph(tenant string) *Graph {
	return &Graph{
		tenant:   tenant,
		index:    map[string]uint32{},
		relIndex: map[string]uint16{},
		kinds:    map[string]string{},
		byKind:   map[string]int{},
	}
}

// Tenant is the tenant the graph belongs to.
func (g *Graph) Tenant() string { return g.tenant }

// AppliedSeq is the seq of the last receipt applied through Tenants.Apply
// (0 if none).
func (g *Graph) AppliedSeq() uint64 { return g.applied.Load() }

// NodeView is a node as queries return it. Attrs is shared with the graph:
// treat it as read-only.
type NodeView struct {
	ID      string         `json:"id"`
	Kind    string         `json:"kind"`
	Attrs   map[string]any `json:"attrs"`
	Version uint64         `json:"version"`
	Deleted bool           `json:"deleted,omitempty"`
}

// Edge is a typed, directed edge between two node ids.
type Edge struct {
	From string `json:"from"`
	Rel  string `json:"rel"`
	To   string `json:"to"`
}

func (e Edge) String() string { return e.From + " -" + e.Rel + "-> " + e.To }

// Node returns the node with id, including a deleted one (Deleted set). It
// reports false for an id the graph has never seen as an entity.
func (g *Graph) Node(id string) (NodeView, bool) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	i, ok := g.index[id]
	if !ok || !g.nodes[i].known {
		return NodeView{}, false
	}
	return g.view(i), true
}

// HasEdge reports whether the edge from -rel-> to exists.
func (g *Graph) HasEdge(from, rel, to string) bool {
	g.mu.RLock()
	defer g.mu.RUnlock()
	f, ok1 := g.index[from]
	t, ok2 := g.index[to]
	r, ok3 := g.relIndex[rel]
	return ok1 && ok2 && ok3 && g.findEdge(f, r, t)
}

// Stats summarises the graph.
type Stats struct {
	Nodes   int            `json:"nodes"`   // live entities (not deleted)
	Deleted int            `json:"deleted"` // tombstones
	Edges   int            `json:"edges"`
	ByKind  map[string]int `json:"by_kind"` // live entities per kind
	ByRel   map[string]int `json:"by_rel"`  // edges per relation type
}

// Stats counts nodes and edges.
func (g *Graph) Stats() Stats {
	g.mu.RLock()
	defer g.mu.RUnlock()
	s := Stats{Nodes: g.live, Deleted: g.deleted, Edges: g.edges,
		ByKind: make(map[string]int, len(g.byKind)), ByRel: make(map[string]int, len(g.rels))}
	for k, n := range g.byKind {
		if n > 0 {
			s.ByKind[k] = n
		}
	}
	for r, n := range g.relCount {
		if n > 0 {
			s.ByRel[g.rels[r]] = n
		}
	}
	return s
}

// ApplyChange folds one allowed receipt's change into the graph and reports
// whether anything changed. It is idempotent: re-applying a change that is
// already reflected changes nothing.
//   - entity.put with a version <= the node's current version is a no-op;
//   - entity.delete with a version <= the current version is a no-op;
//     otherwise it removes the relations in Unlinked and every other edge of
//     the node (both directions) and keeps the node as a tombstone;
//   - relation.link of an existing edge, or touching a deleted node, is a
//     no-op; an endpoint never seen before becomes a stub node;
//   - relation.unlink of a missing edge is a no-op.
//
// A nil change is a no-op. A malformed change (unknown op, missing entity or
// relation, empty id) is an error and leaves the graph unchanged.
func (g *Graph) ApplyChange(c *events.Change) (changed bool, err error) {
	if err := validateChange(c); err != nil {
		return false, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.applyLocked(c)
}

func validateChange(c *events.Change) error {
	if c == nil {
		return nil
	}
	switch c.Op {
	case events.OpEntityPut, events.OpEntityDelete:
		if c.Entity == nil {
			return fmt.Errorf("graph: change %s without entity", c.Op)
		}
		if c.Entity.ID == "" {
			return fmt.Errorf("graph: change %s: empty entity id", c.Op)
		}
		for _, r := range c.Unlinked {
			if err := validateRelation(c.Op, &r); err != nil {
				return err
			}
		}
	case events.OpRelationLink, events.OpRelationUnlink:
		if c.Relation == nil {
			return fmt.Errorf("graph: change %s without relation", c.Op)
		}
		return validateRelation(c.Op, c.Relation)
	case events.OpApprovalGrant:
	case events.OpPurge:
		if c.Purge == nil || c.Purge.Subject == "" {
			return fmt.Errorf("graph: change %s without subject", c.Op)
		}
	default:
		return fmt.Errorf("graph: unknown change op %q", c.Op)
	}
	return nil
}

func validateRelation(op string, r *events.Relation) error {
	if r.From == "" || r.To == "" || r.Rel == "" {
		return fmt.Errorf("graph: change %s: relation needs from, rel and to, got %q -%q-> %q", op, r.From, r.Rel, r.To)
	}
	return nil
}

func (g *Graph) applyLocked(c *events.Change) (bool, error) {
	if c == nil {
		return false, nil
	}
	switch c.Op {
	case events.OpEntityPut:
		return g.put(c.Entity, c.Unlinked), nil
	case events.OpEntityDelete:
		e := *c.Entity
		e.Deleted = true
		return g.put(&e, c.Unlinked), nil
	case events.OpRelationLink:
		return g.link(*c.Relation)
	case events.OpRelationUnlink:
		return g.unlink(*c.Relation), nil
	case events.OpApprovalGrant:
		return false, nil // approvals are not part of the company graph
	case events.OpPurge:
		return g.purge(c.Purge.Subject), nil
	}
	return false, fmt.Errorf("graph: unknown change op %q", c.Op)
}

// purge erases what the graph still holds of a deleted subject: the
// tombstone's last attributes.
func (g *Graph) purge(id string) bool {
	i, ok := g.index[id]
	if !ok || len(g.nodes[i].attrs) == 0 {
		return false
	}
	g.nodes[i].attrs = nil
	return true
}

func (g *Graph) put(e *events.Entity, unlinked []events.Relation) bool {
	i, ok := g.index[e.ID]
	if ok && g.nodes[i].known && e.Version <= g.nodes[i].version {
		return false
	}
	for _, r := range unlinked {
		g.unlink(r)
	}
	if !ok {
		i = g.addNode(e.ID)
	}
	n := &g.nodes[i]
	g.uncount(n)
	n.kind = g.internKind(e.Kind)
	n.attrs = maps.Clone(e.Attrs) // shallow: the change is not reused by the caller
	n.version = e.Version
	n.deleted = e.Deleted
	n.known = true
	g.count(n)
	if n.deleted {
		g.removeEdgesOf(i)
	}
	return true
}

func (g *Graph) count(n *node) {
	switch {
	case !n.known:
	case n.deleted:
		g.deleted++
	default:
		g.live++
		g.byKind[n.kind]++
	}
}

func (g *Graph) uncount(n *node) {
	switch {
	case !n.known:
	case n.deleted:
		g.deleted--
	default:
		g.live--
		if g.byKind[n.kind]--; g.byKind[n.kind] == 0 {
			delete(g.byKind, n.kind)
		}
	}
}

func (g *Graph) internKind(k string) string {
	if s, ok := g.kinds[k]; ok {
		return s
	}
	g.kinds[k] = k
	return k
}

func (g *Graph) addNode(id string) uint32 {
	i := uint32(len(g.nodes))
	g.index[id] = i
	g.nodes = append(g.nodes, node{id: id})
	g.out = append(g.out, nil)
	g.in = append(g.in, nil)
	return i
}

// ErrTooManyRelationTypes is returned when a tenant uses more relation
// types than an edge can name.
var ErrTooManyRelationTypes = errors.New("graph: too many relation types (max 65535)")

func (g *Graph) internRel(rel string) (uint16, error) {
	if r, ok := g.relIndex[rel]; ok {
		return r, nil
	}
	if len(g.rels) >= math.MaxUint16 {
		return 0, ErrTooManyRelationTypes
	}
	r := uint16(len(g.rels))
	g.rels = append(g.rels, rel)
	g.relIndex[rel] = r
	g.relCount = append(g.relCount, 0)
	return r, nil
}

func (g *Graph) link(r events.Relation) (bool, error) {
	f, okF := g.index[r.From]
	t, okT := g.index[r.To]
	if (okF && g.nodes[f].deleted) || (okT && g.nodes[t].deleted) {
		return false, nil
	}
	rel, err := g.internRel(r.Rel)
	if err != nil {
		return false, err
	}
	if okF && okT && g.findEdge(f, rel, t) {
		return false, nil
	}
	if !okF {
		f = g.addNode(r.From)
	}
	if !okT {
		t = g.addNode(r.To)
	}
	g.out[f] = append(g.out[f], edge{peer: t, rel: rel})
	g.in[t] = append(g.in[t], edge{peer: f, rel: rel})
	g.edges++
	g.relCount[rel]++
	return true, nil
}

// findEdge scans the shorter of the two adjacency lists.
func (g *Graph) findEdge(f uint32, rel uint16, t uint32) bool {
	if len(g.out[f]) <= len(g.in[t]) {
		return slices.Index(g.out[f], edge{peer: t, rel: rel}) >= 0
	}
	return slices.Index(g.in[t], edge{peer: f, rel: rel}) >= 0
}

func (g *Graph) unlink(r events.Relation) bool {
	f, ok1 := g.index[r.From]
	t, ok2 := g.index[r.To]
	rel, ok3 := g.relIndex[r.Rel]
	if !ok1 || !ok2 || !ok3 {
		return false
	}
	if !swapRemove(&g.out[f], edge{peer: t, rel: rel}) {
		return false
	}
	swapRemove(&g.in[t], edge{peer: f, rel: rel})
	g.edges--
	g.relCount[rel]--
	return true
}

// removeEdgesOf removes every edge touching node i, in both directions.
func (g *Graph) removeEdgesOf(i uint32) {
	for _, e := range g.out[i] {
		swapRemove(&g.in[e.peer], edge{peer: i, rel: e.rel})
		g.edges--
		g.relCount[e.rel]--
	}
	g.out[i] = nil
	// A self-loop was already removed from in[i] above.
	for _, e := range g.in[i] {
		swapRemove(&g.out[e.peer], edge{peer: i, rel: e.rel})
		g.edges--
		g.relCount[e.rel]--
	}
	g.in[i] = nil
}

// swapRemove deletes e from *s by moving the last element into its place.
func swapRemove(s *[]edge, e edge) bool {
	l := *s
	k := slices.Index(l, e)
	if k < 0 {
		return false
	}
	last := len(l) - 1
	l[k] = l[last]
	*s = l[:last]
	if len(*s) == 0 {
		*s = nil
	}
	return true
}

func (g *Graph) view(i uint32) NodeView {
	n := &g.nodes[i]
	attrs := n.attrs
	if attrs == nil {
		attrs = emptyAttrs
	}
	return NodeView{ID: n.id, Kind: n.kind, Attrs: attrs, Version: n.version, Deleted: n.deleted}
}

// emptyAttrs is shared by views of nodes without attributes, so that they
// marshal as {} rather than null. Never written.
var emptyAttrs = map[string]any{}

// ErrGap is matched (errors.Is) by a *GapError.
var ErrGap = errors.New("graph: gap in receipt sequence")

// GapError reports a receipt whose seq is not the next one for its tenant:
// the projector missed records and must rebuild from an earlier position.
type GapError struct {
	Tenant  string
	Applied uint64 // seq applied so far
	Seq     uint64 // seq offered
}

func (e *GapError) Error() string {
	return fmt.Sprintf("graph: gap in receipt sequence of tenant %s: applied %d, got %d (want %d)", e.Tenant, e.Applied, e.Seq, e.Applied+1)
}

// Is makes errors.Is(err, ErrGap) true.
func (e *GapError) Is(target error) bool { return target == ErrGap }

// Tenants is the registry of per-tenant graphs. It is safe for concurrent
// use; changes to one tenant must come from one goroutine at a time (they
// do: a tenant is one partition's key).
type Tenants struct {
	mu     sync.RWMutex
	graphs map[string]*Graph
}

// NewTenants returns an empty registry.
func NewTenants() *Tenants { return &Tenants{graphs: map[string]*Graph{}} }

// Graph returns tenant's graph, or nil if nothing was applied for it.
func (t *Tenants) Graph(tenant string) *Graph {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.graphs[tenant]
}

// Names lists the tenants, sorted.
func (t *Tenants) Names() []string {
	t.mu.RLock()
	defer t.mu.RUnlock()
	names := make([]string, 0, len(t.graphs))
	for n := range t.graphs {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// AppliedSeq is the seq of tenant's last applied receipt (0 if none).
func (t *Tenants) AppliedSeq(tenant string) uint64 {
	if g := t.Graph(tenant); g != nil {
		return g.AppliedSeq()
	}
	return 0
}

// Apply applies the change of tenant's receipt seq. Every receipt advances
// the seq, so a deny receipt is applied with a nil change.
//   - seq <= AppliedSeq(tenant): already applied, a no-op (replay);
//   - seq > AppliedSeq(tenant)+1: a *GapError (errors.Is ErrGap), nothing
//     applied;
//   - a malformed change: an error, and the seq is not advanced. To skip a
//     poison record deliberately, Apply the same seq with a nil change;
//     replays of it are then no-ops like any other.
//
// The first seq of a tenant is 1; seq 0 is never applied.
func (t *Tenants) Apply(tenant string, seq uint64, c *events.Change) error {
	g := t.Graph(tenant)
	if g == nil {
		switch {
		case seq == 0:
			return nil
		case seq > 1:
			return &GapError{Tenant: tenant, Applied: 0, Seq: seq}
		}
		// Validate before creating the tenant, so a bad first change leaves
		// no empty graph behind.
		if err := validateChange(c); err != nil {
			return fmt.Errorf("graph: tenant %s seq %d: %w", tenant, seq, err)
		}
		g = t.getOrCreate(tenant)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	applied := g.applied.Load()
	switch {
	case seq <= applied: // a replay, even of a record skipped as poison
		return nil
	case seq > applied+1:
		return &GapError{Tenant: tenant, Applied: applied, Seq: seq}
	}
	if err := validateChange(c); err != nil {
		return fmt.Errorf("graph: tenant %s seq %d: %w", tenant, seq, err)
	}
	if _, err := g.applyLocked(c); err != nil {
		return fmt.Errorf("graph: tenant %s seq %d: %w", tenant, seq, err)
	}
	g.applied.Store(seq)
	return nil
}

func (t *Tenants) getOrCreate(tenant string) *Graph {
	t.mu.Lock()
	defer t.mu.Unlock()
	g, ok := t.graphs[tenant]
	if !ok {
		g = NewGraph(tenant)
		t.graphs[tenant] = g
	}
	return g
}
