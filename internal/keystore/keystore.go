// Package keystore owns the per-subject data keys of selective disclosure:
// creating a subject's key on first use, reading it back to disclose a
// value, and destroying it to erase the subject (crypto-shredding).
//
// Keys live in Postgres (schemas/postgres/0003_keystore.up.sql) wrapped with
// AES-256-GCM under a key-encryption key (KEK) held outside the database.
// The package must not know what the keys protect: sealing and opening
// values is events.Seal / events.Open.
package keystore

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Sentinel errors.
var (
	// ErrShredded reports a key that was destroyed: its values are erased.
	ErrShredded = errors.New("keystore: subject key was shredded")
	// ErrNotFound reports an unknown key id.
	ErrNotFound = errors.New("keystore: no such key")
)

// KEKSize is the size of the key-encryption key and of every subject key.
const KEKSize = 32

// Store is a Postgres-backed keystore. It caches unwrapped live keys in
// memory (a key is immutable until shredded; Shred evicts it).
type Store struct {
	pool *pgxpool.Pool
	kek  cipher.AEAD

	mu    sync.Mutex
	// live caches the keys Key hands out (the processor's hot path). Only
	// the tenant's single writer shreds its subjects, through Shred, which
	// evicts them, so the cache cannot outlive a key.
	live  map[string]Key // tenant\x00subject → live key
	limit int
}

// Key is a subject's data key.
type Key struct {
	ID    int64
	Bytes []byte
}

// New returns a store over pool (migrated) with the 32-byte KEK.
func New(pool *pgxpool.Pool, kek []byte) (*Store, error) {
	if pool == nil {
		return nil, errors.New("keystore: pool required")
	}
	if len(kek) != KEKSize {
		return nil, fmt.Errorf("keystore: key-encryption key is %d bytes, want %d", len(kek), KEKSize)
	}
	b, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	a, err := cipher.NewGCM(b)
	if err != nil {
		return nil, err
	}
	return &Store{pool: pool, kek: a, live: map[string]Key{}, limit: 100_000}, nil
}

// LoadOrCreateKEK reads a raw 32-byte KEK from path, creating it (0600) when
// absent.
func LoadOrCreateKEK(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		if len(b) != KEKSize {
			return nil, fmt.Errorf("keystore: %s holds %d bytes, want %d", path, len(b), KEKSize)
		}
		return b, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("keystore: read %s: %w", path, err)
	}
	b = make([]byte, KEKSize)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("keystore: create %s: %w", path, err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return nil, fmt.Errorf("keystore: write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, err
	}
	return b, f.Close()
}

func aad(id int64, tenant, subject string) []byte {
	return []byte(strconv.FormatInt(id, 10) + "\x00" + tenant + "\x00" + subject)
}

func (s *Store) wrap(id int64, tenant, subject string, key []byte) ([]byte, error) {
	nonce := make([]byte, s.kek.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return s.kek.Seal(nonce, nonce, key, aad(id, tenant, subject)), nil
}

func (s *Store) unwrap(id int64, tenant, subject string, wrapped []byte) ([]byte, error) {
	n := s.kek.NonceSize()
	if len(wrapped) < n {
		return nil, fmt.Errorf("keystore: key %d: wrapped key too short", id)
	}
	k, err := s.kek.Open(nil, wrapped[:n], wrapped[n:], aad(id, tenant, subject))
	if err != nil {
		return nil, fmt.Errorf("keystore: key %d: unwrap (wrong key-encryption key?): %w", id, err)
	}
	return k, nil
}

func (s *Store) remember(tenant, subject string, k Key) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.live) >= s.limit {
		clear(s.live)
	}
	s.live[tenant+"\x00"+subject] = k
}

// Key returns the subject's live key, creating it on first use. The key is
// committed to Postgres before Key returns, so a value sealed with it is
// never unrecoverable because of a crash.
func (s *Store) Key(ctx context.Context, tenant, subject string) (Key, error) {
	s.mu.Lock()
	k, ok := s.live[tenant+"\x00"+subject]
	s.mu.Unlock()
	if ok {
		return k, nil
	}
	for attempt := 0; attempt < 3; attempt++ {
		var id int64
		var wrapped []byte
		err := s.pool.QueryRow(ctx, `SELECT key_id, wrapped_key FROM subject_keys
			WHERE tenant = $1 AND subject = $2 AND shredded_at IS NULL`, tenant, subject).Scan(&id, &wrapped)
		if err == nil {
			b, err := s.unwrap(id, tenant, subject, wrapped)
			if err != nil {
				return Key{}, err
			}
			k = Key{ID: id, Bytes: b}
			s.remember(tenant, subject, k)
			return k, nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return Key{}, fmt.Errorf("keystore: read key %s/%s: %w", tenant, subject, err)
		}
		// Create: reserve the id, wrap with it as associated data, insert.
		// A concurrent creator wins via the unique index; we then re-read.
		fresh := make([]byte, KEKSize)
		if _, err := rand.Read(fresh); err != nil {
			return Key{}, err
		}
		if err := s.pool.QueryRow(ctx, "SELECT nextval('subject_keys_key_id_seq')").Scan(&id); err != nil {
			return Key{}, fmt.Errorf("keystore: reserve key id: %w", err)
		}
		w, err := s.wrap(id, tenant, subject, fresh)
		if err != nil {
			return Key{}, err
		}
		tag, err := s.pool.Exec(ctx, `INSERT INTO subject_keys (key_id, tenant, subject, wrapped_key)
			VALUES ($1, $2, $3, $4) ON CONFLICT (tenant, subject) WHERE shredded_at IS NULL DO NOTHING`, id, tenant, subject, w)
		if err != nil {
			return Key{}, fmt.Errorf("keystore: create key %s/%s: %w", tenant, subject, err)
		}
		if tag.RowsAffected() == 1 {
			k = Key{ID: id, Bytes: fresh}
			s.remember(tenant, subject, k)
			return k, nil
		}
	}
	return Key{}, fmt.Errorf("keystore: create key %s/%s: lost the race three times", tenant, subject)
}

// ByID returns the key with id; ErrShredded once it was destroyed. It always
// reads Postgres: disclosure is rare, and a key shredded by another
// instance must never be served from a stale cache.
func (s *Store) ByID(ctx context.Context, id int64) ([]byte, error) {
	var tenant, subject string
	var wrapped []byte
	var shredded *time.Time
	err := s.pool.QueryRow(ctx, `SELECT tenant, subject, wrapped_key, shredded_at FROM subject_keys WHERE key_id = $1`, id).
		Scan(&tenant, &subject, &wrapped, &shredded)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("%w: %d", ErrNotFound, id)
	}
	if err != nil {
		return nil, fmt.Errorf("keystore: read key %d: %w", id, err)
	}
	if shredded != nil {
		return nil, fmt.Errorf("%w: key %d (%s/%s) at %s", ErrShredded, id, tenant, subject, shredded.UTC().Format(time.RFC3339))
	}
	return s.unwrap(id, tenant, subject, wrapped)
}

// Shredded is one destroyed key.
type Shredded struct {
	KeyID   int64  `json:"key_id"`
	Tenant  string `json:"tenant"`
	Subject string `json:"subject"`
}

// Shred destroys every key of the subject (all epochs), recording the
// receipt that ordered it. It is idempotent: already-shredded keys are left
// as they are and not returned again.
func (s *Store) Shred(ctx context.Context, tenant, subject, byReceipt string) ([]Shredded, error) {
	rows, err := s.pool.Query(ctx, `UPDATE subject_keys SET wrapped_key = NULL, shredded_at = now(), shredded_by = $3
		WHERE tenant = $1 AND subject = $2 AND shredded_at IS NULL RETURNING key_id`, tenant, subject, byReceipt)
	if err != nil {
		return nil, fmt.Errorf("keystore: shred %s/%s: %w", tenant, subject, err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("keystore: shred %s/%s: %w", tenant, subject, err)
	}
	s.mu.Lock()
	delete(s.live, tenant+"\x00"+subject)
	out := make([]Shredded, 0, len(ids))
	for _, id := range ids {
		out = append(out, Shredded{KeyID: id, Tenant: tenant, Subject: subject})
	}
	s.mu.Unlock()
	return out, nil
}

// Status describes the keys of one subject, for audit (replay lineage).
type Status struct {
	KeyID      int64      `json:"key_id"`
	CreatedAt  time.Time  `json:"created_at"`
	ShreddedAt *time.Time `json:"shredded_at,omitempty"`
	ShreddedBy string     `json:"shredded_by,omitempty"`
}

// Statuses lists every key the subject ever had, oldest first.
func (s *Store) Statuses(ctx context.Context, tenant, subject string) ([]Status, error) {
	rows, err := s.pool.Query(ctx, `SELECT key_id, created_at, shredded_at, coalesce(shredded_by, '') FROM subject_keys
		WHERE tenant = $1 AND subject = $2 ORDER BY key_id`, tenant, subject)
	if err != nil {
		return nil, fmt.Errorf("keystore: statuses %s/%s: %w", tenant, subject, err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Status, error) {
		var st Status
		err := r.Scan(&st.KeyID, &st.CreatedAt, &st.ShreddedAt, &st.ShreddedBy)
		return st, err
	})
}
