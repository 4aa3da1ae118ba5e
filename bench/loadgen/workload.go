package loadgen

import (
	"math/rand/v2"
	"strconv"
	"sync"
)

// Workload mixes.
const (
	// MixCreate sends only entity.create, each with a new id.
	MixCreate = "create"
	// MixMixed sends 50% entity.create, 30% entity.update and 20%
	// relation.link; updates and links only touch entities whose create
	// already got a 2xx, so they should succeed too.
	MixMixed = "mixed"
)

// Mixes lists the supported workload mixes.
var Mixes = []string{MixCreate, MixMixed}

// Command types, as sent in the "type" field.
const (
	typeCreate = "entity.create"
	typeUpdate = "entity.update"
	typeLink   = "relation.link"
)

var regions = [...]string{"us", "eu", "ap", "sa"}

// workload builds request bodies. It is safe for concurrent use.
type workload struct {
	runID   string
	mix     string
	tenants []*tenantLoad
}

// tenantLoad remembers which of one tenant's entities exist, for updates and
// links in the mixed workload.
type tenantLoad struct {
	name string

	mu      sync.Mutex
	created []string // entities whose create returned 2xx
	// unlinked are created entities not yet used as the "from" of a link:
	// every link has a fresh "from", so links never collide (409).
	unlinked []string
}

func newWorkload(runID, mix, tenantPrefix string, tenants int) *workload {
	w := &workload{runID: runID, mix: mix}
	for i := range tenants {
		w.tenants = append(w.tenants, &tenantLoad{name: tenantPrefix + strconv.Itoa(i)})
	}
	return w
}

// request is one command to send.
type request struct {
	typ  string
	body []byte
	// ok is called after a 2xx answer (nil when nothing needs remembering).
	ok func()
}

// next returns the n-th command of the run. Ids are <runID>-<n>, so a run
// never collides with itself and, with distinct run ids, not with other runs.
func (w *workload) next(n uint64) request {
	t := w.tenants[n%uint64(len(w.tenants))]
	if w.mix == MixMixed {
		switch n / uint64(len(w.tenants)) % 10 {
		case 5, 6, 7:
			if r, ok := w.update(t, n); ok {
				return r
			}
		case 8, 9:
			if r, ok := w.link(t); ok {
				return r
			}
		}
	}
	return w.create(t, n)
}

func (w *workload) entityID(n uint64) string {
	return "svc:" + w.runID + "-" + strconv.FormatUint(n, 10)
}

// header starts {"tenant":"…","type":"…","payload":. Tenants, types, ids and
// attribute values are all plain ASCII without quotes or backslashes, so no
// escaping is needed (Config.Validate checks the run id).
func header(b []byte, tenant, typ string) []byte {
	b = append(b, `{"tenant":"`...)
	b = append(b, tenant...)
	b = append(b, `","type":"`...)
	b = append(b, typ...)
	return append(b, `","payload":`...)
}

func (w *workload) create(t *tenantLoad, n uint64) request {
	id := w.entityID(n)
	b := make([]byte, 0, 192)
	b = header(b, t.name, typeCreate)
	b = append(b, `{"id":"`...)
	b = append(b, id...)
	b = append(b, `","kind":"service","attrs":{"region":"`...)
	b = append(b, regions[n%uint64(len(regions))]...)
	b = append(b, `","tier":`...)
	b = strconv.AppendUint(b, n%3, 10)
	b = append(b, `,"owner":"team-bench"}}}`...)
	r := request{typ: typeCreate, body: b}
	if w.mix == MixMixed {
		r.ok = func() {
			t.mu.Lock()
			t.created = append(t.created, id)
			t.unlinked = append(t.unlinked, id)
			t.mu.Unlock()
		}
	}
	return r
}

func (w *workload) update(t *tenantLoad, n uint64) (request, bool) {
	t.mu.Lock()
	if len(t.created) == 0 {
		t.mu.Unlock()
		return request{}, false
	}
	id := t.created[rand.IntN(len(t.created))]
	t.mu.Unlock()
	b := make([]byte, 0, 160)
	b = header(b, t.name, typeUpdate)
	b = append(b, `{"id":"`...)
	b = append(b, id...)
	b = append(b, `","attrs":{"tier":`...)
	b = strconv.AppendUint(b, n%5, 10)
	b = append(b, `,"touched_by":"`...)
	b = strconv.AppendUint(b, n, 10)
	b = append(b, `"}}}`...)
	return request{typ: typeUpdate, body: b}, true
}

func (w *workload) link(t *tenantLoad) (request, bool) {
	t.mu.Lock()
	if len(t.unlinked) == 0 || len(t.created) < 2 {
		t.mu.Unlock()
		return request{}, false
	}
	from := t.unlinked[0]
	t.unlinked = t.unlinked[1:]
	to := from
	for to == from {
		to = t.created[rand.IntN(len(t.created))]
	}
	t.mu.Unlock()
	b := make([]byte, 0, 192)
	b = header(b, t.name, typeLink)
	b = append(b, `{"from":"`...)
	b = append(b, from...)
	b = append(b, `","rel":"depends_on","to":"`...)
	b = append(b, to...)
	b = append(b, `"}}`...)
	return request{typ: typeLink, body: b}, true
}
