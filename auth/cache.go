package auth

import (
	"crypto/sha256"
	"sync"
	"time"
)

// evictScan bounds how many entries an insert into a full cache inspects for
// an expired victim before evicting an arbitrary one, so inserts stay O(1).
const evictScan = 32

// tokenCache remembers verified tokens by SHA-256 of the token string until
// their deadline (exp + leeway). Only successfully verified tokens are
// stored, so filling it requires holding many valid tokens.
type tokenCache struct {
	mu      sync.RWMutex
	max     int
	entries map[[sha256.Size]byte]cacheEntry
}

type cacheEntry struct {
	claims   Claims
	deadline time.Time // the entry is expired once now is not before this
}

func newTokenCache(max int) *tokenCache {
	return &tokenCache{max: max, entries: make(map[[sha256.Size]byte]cacheEntry)}
}

// get returns the cached claims for key. expired reports a hit whose deadline
// has passed; the entry is dropped and the caller must reject the token.
func (c *tokenCache) get(key [sha256.Size]byte, now time.Time) (claims Claims, hit, expired bool) {
	c.mu.RLock()
	e, ok := c.entries[key]
	c.mu.RUnlock()
	if !ok {
		return Claims{}, false, false
	}
	if !now.Before(e.deadline) {
		c.mu.Lock()
		delete(c.entries, key)
		c.mu.Unlock()
		return e.claims, true, true
	}
	return e.claims.clone(), true, false
}

// put stores claims (cloned) until deadline, evicting one entry when full.
func (c *tokenCache) put(key [sha256.Size]byte, claims Claims, deadline, now time.Time) {
	e := cacheEntry{claims: claims.clone(), deadline: deadline}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.entries[key]; !ok && len(c.entries) >= c.max {
		c.evictLocked(now)
	}
	c.entries[key] = e
}

// evictLocked removes an expired entry if one turns up among the first
// evictScan, otherwise the first one seen. Map iteration starts at a random
// position, which makes this a cheap random eviction.
func (c *tokenCache) evictLocked(now time.Time) {
	var victim [sha256.Size]byte
	found, scanned := false, 0
	for k, e := range c.entries {
		if !found {
			victim, found = k, true
		}
		if !now.Before(e.deadline) {
			victim = k
			break
		}
		if scanned++; scanned >= evictScan {
			break
		}
	}
	if found {
		delete(c.entries, victim)
	}
}

func (c *tokenCache) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.entries)
}
