package keystore_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/companyos/companyos/internal/keystore"
	"github.com/companyos/companyos/internal/stores"
	"github.com/companyos/companyos/projections/ledger"
)

func newStore(t *testing.T) (*keystore.Store, *pgxpool.Pool, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool, err := stores.EnsurePostgres(ctx, stores.TestPostgres(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := ledger.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	kek := make([]byte, keystore.KEKSize)
	_, _ = rand.Read(kek)
	s, err := keystore.New(pool, kek)
	if err != nil {
		t.Fatal(err)
	}
	return s, pool, kek
}

// A subject gets one key, created once even under concurrent first use,
// readable by id; shredding destroys it for good (idempotently, recording
// who did it), and the subject's next key is a fresh one.
func TestKeyLifecycle(t *testing.T) {
	s, pool, kek := newStore(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	keys := make([]keystore.Key, 8)
	for i := range keys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			other, err := keystore.New(pool, kek) // separate caches: the race is in Postgres
			if err != nil {
				t.Error(err)
				return
			}
			if keys[i], err = other.Key(ctx, "t1", "user:alice"); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	for _, k := range keys[1:] {
		if k.ID != keys[0].ID || !bytes.Equal(k.Bytes, keys[0].Bytes) {
			t.Fatalf("concurrent first use created different keys: %d vs %d", k.ID, keys[0].ID)
		}
	}
	got, err := s.ByID(ctx, keys[0].ID)
	if err != nil || !bytes.Equal(got, keys[0].Bytes) {
		t.Fatalf("ByID: %v", err)
	}
	// The wrapped key in Postgres is not the key.
	var wrapped []byte
	if err := pool.QueryRow(ctx, "SELECT wrapped_key FROM subject_keys WHERE key_id = $1", keys[0].ID).Scan(&wrapped); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(wrapped, keys[0].Bytes) {
		t.Fatal("the key is stored unwrapped")
	}
	// Another KEK cannot unwrap it.
	wrong := make([]byte, keystore.KEKSize)
	_, _ = rand.Read(wrong)
	ws, _ := keystore.New(pool, wrong)
	if _, err := ws.ByID(ctx, keys[0].ID); err == nil {
		t.Fatal("a wrong key-encryption key unwrapped the key")
	}

	shredded, err := s.Shred(ctx, "t1", "user:alice", "rcpt_purge")
	if err != nil || len(shredded) != 1 || shredded[0].KeyID != keys[0].ID {
		t.Fatalf("Shred: %v %+v", err, shredded)
	}
	if again, err := s.Shred(ctx, "t1", "user:alice", "rcpt_other"); err != nil || len(again) != 0 {
		t.Fatalf("second Shred: %v %+v", err, again)
	}
	if _, err := s.ByID(ctx, keys[0].ID); !errors.Is(err, keystore.ErrShredded) {
		t.Fatalf("ByID after shred: %v, want ErrShredded", err)
	}
	if _, err := s.ByID(ctx, 999999); !errors.Is(err, keystore.ErrNotFound) {
		t.Fatalf("ByID of an unknown id: %v", err)
	}
	fresh, err := s.Key(ctx, "t1", "user:alice")
	if err != nil || fresh.ID == keys[0].ID || bytes.Equal(fresh.Bytes, keys[0].Bytes) {
		t.Fatalf("after shredding, the subject's key is not fresh: %v %d", err, fresh.ID)
	}
	sts, err := s.Statuses(ctx, "t1", "user:alice")
	if err != nil || len(sts) != 2 || sts[0].ShreddedAt == nil || sts[0].ShreddedBy != "rcpt_purge" || sts[1].ShreddedAt != nil {
		t.Fatalf("Statuses: %v %+v", err, sts)
	}
}

func TestNewRejectsBadKEK(t *testing.T) {
	if _, err := keystore.New(nil, make([]byte, 32)); err == nil {
		t.Error("nil pool accepted")
	}
	s, pool, _ := newStore(t)
	_ = s
	if _, err := keystore.New(pool, make([]byte, 16)); err == nil {
		t.Error("16-byte KEK accepted")
	}
	dir := t.TempDir()
	k1, err := keystore.LoadOrCreateKEK(dir + "/kek")
	if err != nil {
		t.Fatal(err)
	}
	k2, err := keystore.LoadOrCreateKEK(dir + "/kek")
	if err != nil || !bytes.Equal(k1, k2) {
		t.Fatalf("KEK not stable across loads: %v", err)
	}
}
