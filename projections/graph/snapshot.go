package graph

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
)

// Snapshot format, version 1 (all integers unsigned LEB128 varints unless
// noted; a string is its length then its bytes):
//
//	magic    "COSGRAPH"
//	version  1 byte (1)
//	offsets  count, then per partition (ascending): partition (signed
//	         varint), next offset (signed varint)
//	tenants  count, then per tenant (ascending name):
//	           name, applied seq,
//	           relation types: count, strings (index = interned id)
//	           kinds: count, strings
//	           nodes: count, then per node: id, kind index, version,
//	             flags (1 byte: 1 known, 2 deleted, 4 has attributes)
//	           attributes: one byte string holding a stream of JSON objects,
//	             one per node with flag 4, in node order
//	           out-edges: per node: count, then per edge: to, rel
//	           in-edges: per node: count, then per edge: from, rel
//	checksum 32 bytes: SHA-256 of everything before it
//
// Both adjacency directions are stored in their current order, so that a
// restored graph walks (and breaks shortest-path ties) exactly like the
// graph that was saved, and like one rebuilt from the log. Attribute
// numbers come back as json.Number, as they do from a receipt decoded with
// UseNumber.
const (
	snapshotMagic   = "COSGRAPH"
	snapshotVersion = 1
)

// ErrCorruptSnapshot is wrapped by every ReadSnapshot error about the
// snapshot's content (bad magic, version, checksum or structure).
var ErrCorruptSnapshot = errors.New("graph: corrupt snapshot")

// WriteSnapshot writes every tenant's graph and applied seq, and offsets
// (Kafka partition → next offset to consume), to w. Each graph is read
// under its read lock, but the snapshot as a whole is consistent with
// offsets only if no change is applied meanwhile: call it from the
// projector goroutine between records.
func WriteSnapshot(w io.Writer, t *Tenants, offsets map[int32]int64) error {
	h := sha256.New()
	bw := bufio.NewWriterSize(io.MultiWriter(w, h), 256<<10)
	e := &encoder{w: bw}
	e.raw([]byte(snapshotMagic))
	e.raw([]byte{snapshotVersion})

	parts := make([]int32, 0, len(offsets))
	for p := range offsets {
		parts = append(parts, p)
	}
	slices.Sort(parts)
	e.uvarint(uint64(len(parts)))
	for _, p := range parts {
		e.varint(int64(p))
		e.varint(offsets[p])
	}

	names := t.Names()
	e.uvarint(uint64(len(names)))
	for _, name := range names {
		if err := writeGraph(e, t.Graph(name)); err != nil {
			return err
		}
	}
	if err := e.flush(); err != nil {
		return fmt.Errorf("graph: write snapshot: %w", err)
	}
	if _, err := w.Write(h.Sum(nil)); err != nil {
		return fmt.Errorf("graph: write snapshot: %w", err)
	}
	return nil
}

func writeGraph(e *encoder, g *Graph) error {
	g.mu.RLock()
	defer g.mu.RUnlock()
	e.str(g.tenant)
	e.uvarint(g.applied.Load())
	e.uvarint(uint64(len(g.rels)))
	for _, r := range g.rels {
		e.str(r)
	}
	kinds := make([]string, 0, len(g.kinds)+1)
	kinds = append(kinds, "") // stubs have no kind
	for k := range g.kinds {
		if k == "" {
			continue
		}
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	kindIdx := make(map[string]uint64, len(kinds))
	e.uvarint(uint64(len(kinds)))
	for i, k := range kinds {
		kindIdx[k] = uint64(i)
		e.str(k)
	}
	e.uvarint(uint64(len(g.nodes)))
	var attrs bytes.Buffer
	enc := json.NewEncoder(&attrs)
	enc.SetEscapeHTML(false)
	for i := range g.nodes {
		n := &g.nodes[i]
		e.str(n.id)
		e.uvarint(kindIdx[n.kind])
		e.uvarint(n.version)
		var flags byte
		if n.known {
			flags |= 1
		}
		if n.deleted {
			flags |= 2
		}
		if len(n.attrs) > 0 {
			flags |= 4
			if err := enc.Encode(n.attrs); err != nil {
				return fmt.Errorf("graph: snapshot of tenant %s: attrs of %s: %w", g.tenant, n.id, err)
			}
		}
		e.raw([]byte{flags})
	}
	e.bytes(attrs.Bytes())
	for _, adj := range [][][]edge{g.out, g.in} {
		for i := range adj {
			e.uvarint(uint64(len(adj[i])))
			for _, ed := range adj[i] {
				e.uvarint(uint64(ed.peer))
				e.uvarint(uint64(ed.rel))
			}
		}
	}
	return nil
}

type encoder struct {
	w   *bufio.Writer
	buf [binary.MaxVarintLen64]byte
	err error
}

func (e *encoder) raw(b []byte) {
	if e.err == nil {
		_, e.err = e.w.Write(b)
	}
}

func (e *encoder) uvarint(v uint64) { e.raw(e.buf[:binary.PutUvarint(e.buf[:], v)]) }
func (e *encoder) varint(v int64)   { e.raw(e.buf[:binary.PutVarint(e.buf[:], v)]) }
func (e *encoder) bytes(b []byte)   { e.uvarint(uint64(len(b))); e.raw(b) }

func (e *encoder) str(s string) {
	e.uvarint(uint64(len(s)))
	if e.err == nil {
		_, e.err = e.w.WriteString(s)
	}
}

func (e *encoder) flush() error {
	if e.err != nil {
		return e.err
	}
	return e.w.Flush()
}

// ReadSnapshot reads a snapshot written by WriteSnapshot. It reads r to the
// end and verifies the checksum before decoding anything, so a truncated or
// corrupted snapshot is an error (wrapping ErrCorruptSnapshot) and never a
// partial graph.
func ReadSnapshot(r io.Reader) (*Tenants, map[int32]int64, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, nil, fmt.Errorf("graph: read snapshot: %w", err)
	}
	if len(data) < len(snapshotMagic)+1+sha256.Size {
		return nil, nil, fmt.Errorf("%w: %d bytes is too short", ErrCorruptSnapshot, len(data))
	}
	if string(data[:len(snapshotMagic)]) != snapshotMagic {
		return nil, nil, fmt.Errorf("%w: not a graph snapshot (bad magic)", ErrCorruptSnapshot)
	}
	if v := data[len(snapshotMagic)]; v != snapshotVersion {
		return nil, nil, fmt.Errorf("%w: unsupported version %d (want %d)", ErrCorruptSnapshot, v, snapshotVersion)
	}
	body, sum := data[:len(data)-sha256.Size], data[len(data)-sha256.Size:]
	if want := sha256.Sum256(body); !bytes.Equal(sum, want[:]) {
		return nil, nil, fmt.Errorf("%w: checksum mismatch (truncated or modified)", ErrCorruptSnapshot)
	}
	d := &decoder{b: body, off: len(snapshotMagic) + 1}
	t, offsets := d.snapshot()
	if d.err == nil && d.off != len(d.b) {
		d.fail("%d trailing bytes", len(d.b)-d.off)
	}
	if d.err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrCorruptSnapshot, d.err)
	}
	return t, offsets, nil
}

type decoder struct {
	b   []byte
	off int
	err error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("at byte %d: "+format, append([]any{d.off}, args...)...)
	}
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b[d.off:])
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	d.off += n
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b[d.off:])
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	d.off += n
	return v
}

// count reads a length that must fit in the remaining bytes (each element
// takes at least min bytes), so a bad count cannot trigger a huge
// allocation.
func (d *decoder) count(minSize int) int {
	n := d.uvarint()
	if d.err == nil && n > uint64((len(d.b)-d.off)/max(minSize, 1)) {
		d.fail("count %d exceeds the remaining data", n)
		return 0
	}
	return int(n)
}

func (d *decoder) bytes() []byte {
	n := d.count(1)
	if d.err != nil {
		return nil
	}
	b := d.b[d.off : d.off+n]
	d.off += n
	return b
}

func (d *decoder) str() string { return string(d.bytes()) }

func (d *decoder) byte1() byte {
	if d.err != nil {
		return 0
	}
	if d.off >= len(d.b) {
		d.fail("unexpected end")
		return 0
	}
	c := d.b[d.off]
	d.off++
	return c
}

func (d *decoder) snapshot() (*Tenants, map[int32]int64) {
	offsets := map[int32]int64{}
	for range d.count(2) {
		p := d.varint()
		o := d.varint()
		if p < math.MinInt32 || p > math.MaxInt32 {
			d.fail("partition %d out of range", p)
		}
		offsets[int32(p)] = o
	}
	t := NewTenants()
	for range d.count(1) {
		g := d.graph()
		if d.err != nil {
			return nil, nil
		}
		if _, dup := t.graphs[g.tenant]; dup {
			d.fail("tenant %s appears twice", g.tenant)
			return nil, nil
		}
		t.graphs[g.tenant] = g
	}
	return t, offsets
}

func (d *decoder) graph() *Graph {
	g := NewGraph(d.str())
	g.applied.Store(d.uvarint())
	nrels := d.count(1)
	if nrels > math.MaxUint16 {
		d.fail("%d relation types", nrels)
		return g
	}
	for range nrels {
		if _, err := g.internRel(d.str()); err != nil {
			d.fail("%v", err)
		}
	}
	if d.err == nil && len(g.rels) != nrels {
		d.fail("duplicate relation type")
	}
	kinds := make([]string, d.count(1))
	for k := range kinds {
		kinds[k] = g.internKind(d.str())
	}
	nnodes := d.count(5)
	if d.err != nil {
		return g
	}
	g.nodes = make([]node, nnodes)
	g.index = make(map[string]uint32, nnodes)
	withAttrs := 0
	for i := range g.nodes {
		n := &g.nodes[i]
		n.id = d.str()
		k := d.uvarint()
		n.version = d.uvarint()
		flags := d.byte1()
		if d.err != nil {
			return g
		}
		if k >= uint64(len(kinds)) || flags&^7 != 0 {
			d.fail("node %s: bad kind index %d or flags %#x", n.id, k, flags)
			return g
		}
		n.kind = kinds[k]
		n.known, n.deleted = flags&1 != 0, flags&2 != 0
		if flags&4 != 0 {
			n.attrs = map[string]any{} // marks the node for the attribute pass
			withAttrs++
		}
		if _, dup := g.index[n.id]; dup {
			d.fail("node %s appears twice", n.id)
			return g
		}
		g.index[n.id] = uint32(i)
		g.count(n)
	}
	d.attrs(g, withAttrs)
	g.out = d.adjacency(g, true)
	g.in = d.adjacency(g, false)
	ins := 0
	for _, l := range g.in {
		ins += len(l)
	}
	if d.err == nil && ins != g.edges {
		d.fail("tenant %s: %d in-edges for %d out-edges", g.tenant, ins, g.edges)
	}
	return g
}

// adjacency reads one adjacency list per node; out-lists also count edges.
func (d *decoder) adjacency(g *Graph, out bool) [][]edge {
	nnodes := len(g.nodes)
	adj := make([][]edge, nnodes)
	for i := range adj {
		deg := d.count(2)
		if d.err != nil || deg == 0 {
			continue
		}
		l := make([]edge, deg)
		for k := range l {
			peer, rel := d.uvarint(), d.uvarint()
			if d.err == nil && (peer >= uint64(nnodes) || rel >= uint64(len(g.rels))) {
				d.fail("edge %d of node %s out of range", k, g.nodes[i].id)
			}
			if d.err != nil {
				return adj
			}
			l[k] = edge{peer: uint32(peer), rel: uint16(rel)}
			if out {
				g.relCount[rel]++
			}
		}
		adj[i] = l
		if out {
			g.edges += deg
		}
	}
	return adj
}

// attrs decodes the attribute stream into the nodes marked for it. One
// decoder reads the whole stream: a decoder per node would cost more than
// the decoding.
func (d *decoder) attrs(g *Graph, want int) {
	blob := d.bytes()
	if d.err != nil {
		return
	}
	dec := json.NewDecoder(bytes.NewReader(blob))
	dec.UseNumber()
	for i := range g.nodes {
		n := &g.nodes[i]
		if n.attrs == nil {
			continue
		}
		n.attrs = nil
		if err := dec.Decode(&n.attrs); err != nil || len(n.attrs) == 0 {
			d.fail("node %s: attrs: %v", n.id, err)
			return
		}
	}
	if dec.More() {
		d.fail("attribute stream has more than %d objects", want)
	}
}
