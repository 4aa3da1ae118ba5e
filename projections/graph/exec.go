package graph

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// Defaults and caps of Options.
const (
	DefaultMaxDepth   = 6
	DefaultMaxFanout  = 10000
	DefaultMaxResults = 10000
	DefaultLimit      = 100
	MaxLimit          = 1000
	DefaultTimeout    = 2 * time.Second
)

// Options bound and page one execution. Zero values take the defaults.
type Options struct {
	// MaxDepth is optional, default DefaultMaxDepth (6): the largest hop
	// count, depth or path length a query may ask for. A larger one is a
	// *LimitError "depth"; a path query without depth searches this far.
	MaxDepth int
	// MaxFanout is optional, default DefaultMaxFanout (10000): the most
	// edges (after the rel filter) one node may expand to. Reaching a node
	// with more is a *LimitError "fanout".
	MaxFanout int
	// MaxResults is optional, default DefaultMaxResults (10000): the most
	// results (matching nodes, before paging) a rel or neighbors query may
	// have. More is a *LimitError "results".
	MaxResults int
	// Limit is optional, default DefaultLimit (100), capped at MaxLimit
	// (1000): the page size.
	Limit int
	// Cursor is optional: the NextCursor of the previous page of the same
	// query. A cursor of another query is ErrInvalidCursor.
	Cursor string
	// Timeout is optional, default DefaultTimeout (2s): exceeding it is a
	// *LimitError "time".
	Timeout time.Duration
	// Authorizer is required for who_can and unused otherwise. It must be
	// safe for concurrent use: decisions are evaluated in parallel.
	Authorizer Authorizer
	// PrincipalKinds is optional, default ["user", "service"]: the node
	// kinds who_can considers as principals.
	PrincipalKinds []string
}

func (o Options) withDefaults() (Options, error) {
	if o.MaxDepth < 0 || o.MaxFanout < 0 || o.MaxResults < 0 || o.Limit < 0 || o.Timeout < 0 {
		return o, errors.New("graph: negative execution option")
	}
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&o.MaxDepth, DefaultMaxDepth)
	def(&o.MaxFanout, DefaultMaxFanout)
	def(&o.MaxResults, DefaultMaxResults)
	def(&o.Limit, DefaultLimit)
	o.Limit = min(o.Limit, MaxLimit)
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if len(o.PrincipalKinds) == 0 {
		o.PrincipalKinds = []string{"user", "service"}
	}
	return o, nil
}

// Names of the limits a *LimitError reports.
const (
	LimitDepth   = "depth"
	LimitFanout  = "fanout"
	LimitResults = "results"
	LimitTime    = "time"
)

// LimitError reports a query that exceeded one of its Options limits. The
// API answers 422 naming Limit.
type LimitError struct {
	Limit string // LimitDepth, LimitFanout, LimitResults or LimitTime
	Value int64  // what the query asked for or reached (time: elapsed ms)
	Max   int64  // the limit (time: ms)
	Node  string // fanout: the node that has too many edges
}

func (e *LimitError) Error() string {
	switch e.Limit {
	case LimitDepth:
		return fmt.Sprintf("graph: query depth %d exceeds the limit of %d", e.Value, e.Max)
	case LimitFanout:
		return fmt.Sprintf("graph: node %s has %d matching edges, more than the fanout limit of %d; filter with rel=", e.Node, e.Value, e.Max)
	case LimitResults:
		return fmt.Sprintf("graph: query has more than %d results; narrow the pattern, depth or rel filter", e.Max)
	case LimitTime:
		return fmt.Sprintf("graph: query exceeded the time limit of %dms", e.Max)
	}
	return fmt.Sprintf("graph: query exceeded the %s limit (%d > %d)", e.Limit, e.Value, e.Max)
}

// ErrInvalidCursor is returned for a cursor that is malformed or belongs to
// another query.
var ErrInvalidCursor = errors.New("graph: invalid cursor")

// ErrNoAuthorizer is returned for who_can without Options.Authorizer.
var ErrNoAuthorizer = errors.New("graph: who_can needs an Authorizer")

// Path is a walk from a query's start node: Nodes[0] is the start and
// Edges[i] joins Nodes[i] and Nodes[i+1]. Edges keep their real direction,
// so with dir='in' or 'both' an edge may point backwards along the path.
type Path struct {
	Nodes []string `json:"nodes"`
	Edges []Edge   `json:"edges"`
}

// Result is one page of a query's answer. Slices are never nil.
//   - rel, neighbors: Nodes are the page's results sorted by id, Paths[i]
//     is a shortest path to Nodes[i], Edges the edges of those paths.
//   - path: Nodes and Edges of the one shortest path, which is Paths[0];
//     all empty if there is none within the depth.
//   - who_can: Principals, sorted by id. The resource need not exist (the
//     policy sees Exists false): who may create it is a fair question.
type Result struct {
	Nodes      []NodeView        `json:"nodes"`
	Edges      []Edge            `json:"edges"`
	Paths      []Path            `json:"paths"`
	Principals []PrincipalAccess `json:"principals"`
	// NextCursor is set when more results follow: pass it as
	// Options.Cursor with the same query.
	NextCursor string `json:"next_cursor,omitempty"`
}

func emptyResult() Result {
	return Result{Nodes: []NodeView{}, Edges: []Edge{}, Paths: []Path{}, Principals: []PrincipalAccess{}}
}

// Execute runs q against g. An unknown (or deleted) start or target node
// gives an empty result, not an error. Errors: *ParseError for an invalid
// q, *LimitError for an exceeded limit, ErrInvalidCursor, ErrNoAuthorizer,
// or ctx's error if ctx ends first.
//
// Walks hold g's read lock; who_can holds it only while reading the graph,
// not while the Authorizer decides. Pages of one query are not a snapshot:
// changes applied between two calls show up on later pages.
func Execute(ctx context.Context, g *Graph, q Query, opts Options) (Result, error) {
	q = q.normalize()
	if err := q.Validate(); err != nil {
		return Result{}, err
	}
	opts, err := opts.withDefaults()
	if err != nil {
		return Result{}, err
	}
	if q.Depth > opts.MaxDepth {
		return Result{}, &LimitError{Limit: LimitDepth, Value: int64(q.Depth), Max: int64(opts.MaxDepth)}
	}
	after, err := decodeCursor(opts.Cursor, q)
	if err != nil {
		return Result{}, err
	}
	x := &execution{g: g, q: q, opts: opts, after: after, ctx: ctx, start: time.Now()}
	x.deadline = x.start.Add(opts.Timeout)
	var res Result
	switch q.Op {
	case OpRel, OpNeighbors:
		res, err = x.reach()
	case OpPath:
		res, err = x.path()
	case OpWhoCan:
		res, err = x.whoCan()
	}
	if err != nil {
		return Result{}, err
	}
	return res, nil
}

type execution struct {
	g        *Graph
	q        Query
	opts     Options
	after    string // cursor: results with ids <= after were on earlier pages
	ctx      context.Context
	start    time.Time
	deadline time.Time
	steps    int
}

// check is called every expansion; it looks at the clock and ctx only
// every 256 calls.
func (x *execution) check() error {
	x.steps++
	if x.steps&255 != 0 {
		return nil
	}
	return x.checkNow()
}

func (x *execution) checkNow() error {
	if err := x.ctx.Err(); err != nil {
		return err
	}
	if time.Now().After(x.deadline) {
		return x.timeLimit()
	}
	return nil
}

func (x *execution) timeLimit() error {
	return &LimitError{Limit: LimitTime, Value: time.Since(x.start).Milliseconds(), Max: x.opts.Timeout.Milliseconds()}
}

// --- Walks ---------------------------------------------------------------

// visit is the BFS bookkeeping of one node; valid while epoch matches.
type visit struct {
	epoch  uint32
	parent uint32
	rel    uint16
	rev    bool // reached over an in-edge: the real edge is node -rel-> parent
}

// scratch is per-query BFS state, pooled so that a walk over a 50k-node
// graph does not allocate and zero a fresh array each time.
type scratch struct {
	visits []visit
	epoch  uint32
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

func getScratch(n int) *scratch {
	s := scratchPool.Get().(*scratch)
	if len(s.visits) < n {
		s.visits = make([]visit, n+n/4)
		s.epoch = 0
	}
	s.epoch++
	if s.epoch == 0 { // wrapped: old stamps could collide
		clear(s.visits)
		s.epoch = 1
	}
	return s
}

func (s *scratch) seen(i uint32) bool { return s.visits[i].epoch == s.epoch }

func (s *scratch) mark(i, parent uint32, rel uint16, rev bool) {
	s.visits[i] = visit{epoch: s.epoch, parent: parent, rel: rel, rev: rev}
}

// relFilter is the set of interned relation types a walk follows; nil
// follows all.
type relFilter struct {
	all bool
	ids []uint16
}

func (g *Graph) relFilter(rels []string) relFilter {
	if len(rels) == 0 {
		return relFilter{all: true}
	}
	f := relFilter{ids: make([]uint16, 0, len(rels))}
	for _, r := range rels {
		if id, ok := g.relIndex[r]; ok {
			f.ids = append(f.ids, id)
		}
	}
	return f
}

func (f relFilter) ok(rel uint16) bool {
	if f.all {
		return true
	}
	return slices.Contains(f.ids, rel)
}

// bfs walks from start up to maxDepth hops, calling found for each node
// first reached (in BFS order, so its recorded parent chain is a shortest
// path). found returning true stops the walk. The caller holds g.mu.
func (x *execution) bfs(sc *scratch, start uint32, maxDepth int, found func(n uint32) (stop bool, err error)) error {
	g := x.g
	filter := g.relFilter(x.q.Rels)
	if !filter.all && len(filter.ids) == 0 {
		return nil // no edge of the requested types exists
	}
	useOut := x.q.Dir == DirOut || x.q.Dir == DirBoth
	useIn := x.q.Dir == DirIn || x.q.Dir == DirBoth
	sc.mark(start, noNode, 0, false)
	frontier := []uint32{start}
	var next []uint32
	for depth := 1; depth <= maxDepth && len(frontier) > 0; depth++ {
		next = next[:0]
		for _, u := range frontier {
			if err := x.check(); err != nil {
				return err
			}
			fanout := 0
			for pass := 0; pass < 2; pass++ {
				var adj []edge
				switch {
				case pass == 0 && useOut:
					adj = g.out[u]
				case pass == 1 && useIn:
					adj = g.in[u]
				default:
					continue
				}
				for _, e := range adj {
					if !filter.ok(e.rel) {
						continue
					}
					if fanout++; fanout > x.opts.MaxFanout {
						return &LimitError{Limit: LimitFanout, Value: int64(x.countFanout(u, filter, useOut, useIn)),
							Max: int64(x.opts.MaxFanout), Node: g.nodes[u].id}
					}
					if sc.seen(e.peer) {
						continue
					}
					sc.mark(e.peer, u, e.rel, pass == 1)
					next = append(next, e.peer)
					stop, err := found(e.peer)
					if err != nil || stop {
						return err
					}
				}
			}
		}
		frontier, next = next, frontier
	}
	return nil
}

func (x *execution) countFanout(u uint32, f relFilter, useOut, useIn bool) int {
	n := 0
	if useOut {
		for _, e := range x.g.out[u] {
			if f.ok(e.rel) {
				n++
			}
		}
	}
	if useIn {
		for _, e := range x.g.in[u] {
			if f.ok(e.rel) {
				n++
			}
		}
	}
	return n
}

// pathTo rebuilds the BFS path from the walk's start to n.
func (x *execution) pathTo(sc *scratch, n uint32) Path {
	g := x.g
	var rev []uint32
	for i := n; i != noNode; i = sc.visits[i].parent {
		rev = append(rev, i)
	}
	p := Path{Nodes: make([]string, len(rev)), Edges: make([]Edge, len(rev)-1)}
	for k := range rev {
		i := rev[len(rev)-1-k]
		p.Nodes[k] = g.nodes[i].id
		if k == 0 {
			continue
		}
		p.Edges[k-1] = g.realEdge(i, sc.visits[i])
	}
	return p
}

// reach answers rel and neighbors.
func (x *execution) reach() (Result, error) {
	g := x.g
	g.mu.RLock()
	defer g.mu.RUnlock()
	start, ok := g.index[x.q.Start]
	if !ok || g.nodes[start].deleted {
		return emptyResult(), nil
	}
	pattern := "*"
	if x.q.Op == OpRel {
		pattern = x.q.Pattern
	}
	m := newGlobMatcher(pattern)
	sc := getScratch(len(g.nodes))
	defer scratchPool.Put(sc)
	var matches []uint32
	err := x.bfs(sc, start, x.q.Depth, func(n uint32) (bool, error) {
		if !m.match(g.nodes[n].id) {
			return false, nil
		}
		if len(matches) == x.opts.MaxResults {
			return true, &LimitError{Limit: LimitResults, Value: int64(len(matches) + 1), Max: int64(x.opts.MaxResults)}
		}
		matches = append(matches, n)
		return false, nil
	})
	if err != nil {
		return Result{}, err
	}
	page, more := x.page(matches)
	res := emptyResult()
	if more {
		res.NextCursor = encodeCursor(x.q, g.nodes[page[len(page)-1]].id)
	}
	for _, n := range page {
		res.Nodes = append(res.Nodes, g.view(n))
		p := x.pathTo(sc, n)
		res.Paths = append(res.Paths, p)
		res.Edges = append(res.Edges, p.Edges...)
	}
	slices.SortFunc(res.Edges, compareEdges)
	res.Edges = slices.Compact(res.Edges)
	return res, nil
}

// page picks the results after the cursor with the Limit smallest ids, in
// id order, and reports whether more follow. A bounded max-heap keeps it
// O(n log Limit) when a walk matches many more nodes than one page.
func (x *execution) page(matches []uint32) (page []uint32, more bool) {
	g := x.g
	id := func(n uint32) string { return g.nodes[n].id }
	limit := x.opts.Limit
	heap := make([]uint32, 0, min(len(matches), limit))
	count := 0 // matches after the cursor
	for _, n := range matches {
		if x.after != "" && id(n) <= x.after {
			continue
		}
		count++
		switch {
		case len(heap) < limit:
			heap = append(heap, n)
			siftUp(heap, len(heap)-1, id)
		case id(n) < id(heap[0]):
			heap[0] = n
			siftDown(heap, 0, id)
		}
	}
	slices.SortFunc(heap, func(a, b uint32) int { return strings.Compare(id(a), id(b)) })
	return heap, count > limit
}

// siftUp and siftDown maintain a max-heap of node indexes ordered by id.
func siftUp(h []uint32, k int, id func(uint32) string) {
	for k > 0 {
		p := (k - 1) / 2
		if id(h[p]) >= id(h[k]) {
			return
		}
		h[p], h[k] = h[k], h[p]
		k = p
	}
}

func siftDown(h []uint32, k int, id func(uint32) string) {
	for {
		c := 2*k + 1
		if c >= len(h) {
			return
		}
		if c+1 < len(h) && id(h[c+1]) > id(h[c]) {
			c++
		}
		if id(h[k]) >= id(h[c]) {
			return
		}
		h[k], h[c] = h[c], h[k]
		k = c
	}
}

func compareEdges(a, b Edge) int {
	if c := strings.Compare(a.From, b.From); c != 0 {
		return c
	}
	if c := strings.Compare(a.Rel, b.Rel); c != 0 {
		return c
	}
	return strings.Compare(a.To, b.To)
}

// path answers path: one shortest path, or nothing. It searches from both
// ends at once (expanding the smaller frontier), so a path between two
// ordinary nodes does not explore everything within depth of a hub.
func (x *execution) path() (Result, error) {
	g := x.g
	res := emptyResult()
	if x.after != "" { // the single result was on the previous page
		return res, nil
	}
	g.mu.RLock()
	defer g.mu.RUnlock()
	start, ok1 := g.index[x.q.Start]
	target, ok2 := g.index[x.q.Target]
	if !ok1 || !ok2 || g.nodes[start].deleted || g.nodes[target].deleted {
		return res, nil
	}
	depth := x.q.Depth
	if depth == 0 {
		depth = x.opts.MaxDepth
	}
	filter := g.relFilter(x.q.Rels)
	fwd := &side{sc: getScratch(len(g.nodes)), frontier: []uint32{start}}
	defer scratchPool.Put(fwd.sc)
	bwd := &side{sc: getScratch(len(g.nodes)), frontier: []uint32{target}}
	defer scratchPool.Put(bwd.sc)
	fwd.sc.mark(start, noNode, 0, false)
	bwd.sc.mark(target, noNode, 0, false)
	// The backward search follows edges against the query's direction.
	fwd.useOut = x.q.Dir != DirIn
	fwd.useIn = x.q.Dir != DirOut
	bwd.useOut, bwd.useIn = fwd.useIn, fwd.useOut

	meet, found := start, start == target
	for !found && fwd.depth+bwd.depth < depth && len(fwd.frontier) > 0 && len(bwd.frontier) > 0 {
		grow, other := fwd, bwd
		if len(bwd.frontier) < len(fwd.frontier) {
			grow, other = bwd, fwd
		}
		var err error
		if meet, found, err = x.expandLevel(grow, other.sc, filter); err != nil {
			return Result{}, err
		}
	}
	if !found {
		return res, nil
	}
	p := x.pathTo(fwd.sc, meet)
	for v := meet; bwd.sc.visits[v].parent != noNode; {
		vis := bwd.sc.visits[v]
		p.Edges = append(p.Edges, g.realEdge(v, vis))
		v = vis.parent
		p.Nodes = append(p.Nodes, g.nodes[v].id)
	}
	for _, id := range p.Nodes {
		res.Nodes = append(res.Nodes, g.view(g.index[id]))
	}
	res.Edges = append(res.Edges, p.Edges...)
	res.Paths = append(res.Paths, p)
	return res, nil
}

// side is one end of a bidirectional search.
type side struct {
	sc            *scratch
	frontier      []uint32
	next          []uint32
	depth         int
	useOut, useIn bool
}

// expandLevel advances s by one level and reports the first node that the
// other search has already reached. Before the level, no node was reached
// by both, so every path is longer than depth(s)+depth(other); the first
// meeting therefore closes a shortest path.
func (x *execution) expandLevel(s *side, other *scratch, filter relFilter) (meet uint32, found bool, err error) {
	g := x.g
	s.next = s.next[:0]
	for _, u := range s.frontier {
		if err := x.check(); err != nil {
			return 0, false, err
		}
		fanout := 0
		for pass := 0; pass < 2; pass++ {
			var adj []edge
			switch {
			case pass == 0 && s.useOut:
				adj = g.out[u]
			case pass == 1 && s.useIn:
				adj = g.in[u]
			default:
				continue
			}
			for _, e := range adj {
				if !filter.ok(e.rel) {
					continue
				}
				if fanout++; fanout > x.opts.MaxFanout {
					return 0, false, &LimitError{Limit: LimitFanout, Value: int64(x.countFanout(u, filter, s.useOut, s.useIn)),
						Max: int64(x.opts.MaxFanout), Node: g.nodes[u].id}
				}
				if s.sc.seen(e.peer) {
					continue
				}
				s.sc.mark(e.peer, u, e.rel, pass == 1)
				if other.seen(e.peer) {
					return e.peer, true, nil
				}
				s.next = append(s.next, e.peer)
			}
		}
	}
	s.frontier, s.next = s.next, s.frontier
	s.depth++
	return 0, false, nil
}

// realEdge is the edge, in its real direction, between node n and its BFS
// parent as recorded in v.
func (g *Graph) realEdge(n uint32, v visit) Edge {
	e := Edge{From: g.nodes[v.parent].id, Rel: g.rels[v.rel], To: g.nodes[n].id}
	if v.rev {
		e.From, e.To = e.To, e.From
	}
	return e
}

// --- Cursors -------------------------------------------------------------

const cursorVersion = 1

// queryHash ties a cursor to its query: the first 8 bytes of SHA-256 of the
// canonical query text.
func queryHash(q Query) []byte {
	sum := sha256.Sum256([]byte(q.String()))
	return sum[:8]
}

func encodeCursor(q Query, lastID string) string {
	b := make([]byte, 0, 1+8+len(lastID))
	b = append(b, cursorVersion)
	b = append(b, queryHash(q)...)
	b = append(b, lastID...)
	return base64.RawURLEncoding.EncodeToString(b)
}

// decodeCursor returns the last id of the previous page ("" for no cursor).
func decodeCursor(c string, q Query) (string, error) {
	if c == "" {
		return "", nil
	}
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil || len(b) < 1+8+1 || b[0] != cursorVersion {
		return "", fmt.Errorf("%w: malformed", ErrInvalidCursor)
	}
	if string(b[1:9]) != string(queryHash(q)) {
		return "", fmt.Errorf("%w: it belongs to another query", ErrInvalidCursor)
	}
	return string(b[9:]), nil
}
