package metering

import (
	"hash/maphash"
	"math/bits"
	"sync"
	"time"
)

// keyHash identifies an event's idempotency key, scoped to its tenant:
// two independent 64-bit hashes of (subject, source, id) with per-process
// random seeds, so a collision (which would drop an event as a duplicate) is
// neither likely (2^-128) nor predictable by a client, and an entry costs
// 24 bytes whatever the key length.
type keyHash [2]uint64

type keyHasher struct{ seeds [2]maphash.Seed }

func newKeyHasher() keyHasher {
	return keyHasher{[2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()}}
}

// sum hashes the tenant-scoped key: one tenant can never suppress another's
// events by reusing their (source, id).
func (k keyHasher) sum(e Event) keyHash {
	var out keyHash
	for i, seed := range k.seeds {
		var h maphash.Hash
		h.SetSeed(seed)
		h.WriteString(e.Subject)
		h.WriteByte(0)
		h.WriteString(e.Source)
		h.WriteByte(0)
		h.WriteString(e.ID)
		out[i] = h.Sum64()
	}
	return out
}

// recentKeys remembers the keys of events Kafka acknowledged recently, so a
// client retry is answered without producing again. It is an optimisation
// with fixed memory, not the source of truth (the cogs projector dedupes
// authoritatively): a 4-way set-associative table where a new key replaces
// the expired or oldest entry of its set. There are no deletes, so lookups
// stay one cache line whatever the churn (a Go map with FIFO deletes spent
// 15% of ingest CPU probing past tombstones).
type recentKeys struct {
	ttl   int64 // nanoseconds
	mask  uint64
	slots []recentSlot
	locks [64]sync.Mutex
}

type recentSlot struct {
	h   keyHash
	exp int64 // Unix nanoseconds; 0 = empty
}

const recentWays = 4

// newRecentKeys returns a table of at least size entries; nil when size <= 0
// (every method of a nil table is a no-op).
func newRecentKeys(size int, ttl time.Duration) *recentKeys {
	if size <= 0 {
		return nil
	}
	sets := uint64(1) << bits.Len64(uint64((size+recentWays-1)/recentWays)-1)
	return &recentKeys{ttl: int64(ttl), mask: sets - 1, slots: make([]recentSlot, sets*recentWays)}
}

func (c *recentKeys) set(h keyHash) (lock *sync.Mutex, set []recentSlot) {
	i := h[0] & c.mask
	return &c.locks[i%uint64(len(c.locks))], c.slots[i*recentWays : (i+1)*recentWays]
}

// contains reports whether h was added less than ttl ago.
func (c *recentKeys) contains(h keyHash, now time.Time) bool {
	if c == nil {
		return false
	}
	lock, set := c.set(h)
	t := now.UnixNano()
	lock.Lock()
	defer lock.Unlock()
	for i := range set {
		if set[i].h == h && t < set[i].exp {
			return true
		}
	}
	return false
}

// add remembers h until now+ttl.
func (c *recentKeys) add(h keyHash, now time.Time) {
	if c == nil {
		return
	}
	lock, set := c.set(h)
	exp := now.UnixNano() + c.ttl
	lock.Lock()
	defer lock.Unlock()
	victim := 0
	for i := range set {
		if set[i].h == h {
			victim = i
			break
		}
		if set[i].exp < set[victim].exp {
			victim = i
		}
	}
	set[victim] = recentSlot{h: h, exp: exp}
}
