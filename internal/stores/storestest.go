package stores

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Test helpers. They live outside _test.go so other packages' tests can use
// them. Each call gets its own freshly created database, dropped when the test
// ends, so tests never share state and need no hand-prepared database.
//
// They fail the test (never skip) when a server is unreachable: a silently
// skipped store test hides a broken setup.

const (
	// DefaultTestPostgresDSN is the admin connection TestPostgres uses when
	// COMPANYOS_TEST_PG_DSN is unset; deploy/local/up.sh creates it.
	DefaultTestPostgresDSN = "postgres://companyos:companyos@127.0.0.1:5432/companyos?sslmode=disable"
	// DefaultTestClickHouseAddr is the native-protocol address TestClickHouse
	// uses when COMPANYOS_TEST_CH_ADDR is unset.
	DefaultTestClickHouseAddr = "127.0.0.1:9000"

	upHint          = "start the local stores with: bash deploy/local/up.sh"
	testDialTimeout = 15 * time.Second
)

// TestPostgres creates a database named test_<random> on the server of
// COMPANYOS_TEST_PG_DSN (default DefaultTestPostgresDSN), registers a cleanup
// that drops it (WITH (FORCE), so leftover connections don't block it) and
// returns a DSN for it with the same credentials.
func TestPostgres(t testing.TB) (dsn string) {
	t.Helper()
	adminDSN := os.Getenv("COMPANYOS_TEST_PG_DSN")
	if adminDSN == "" {
		adminDSN = DefaultTestPostgresDSN
	}
	adminCfg, err := pgx.ParseConfig(adminDSN)
	if err != nil {
		t.Fatalf("stores: parse COMPANYOS_TEST_PG_DSN: %v", err)
	}
	name := "test_" + randomSuffix(t)
	quoted := pgx.Identifier{name}.Sanitize()

	ctx, cancel := context.WithTimeout(context.Background(), testDialTimeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, adminCfg)
	if err != nil {
		t.Fatalf("stores: Postgres unreachable at %s: %v\n%s", describePg(adminCfg), err, upHint)
	}
	_, err = conn.Exec(ctx, "CREATE DATABASE "+quoted)
	_ = conn.Close(ctx)
	if err != nil {
		t.Fatalf("stores: create test database %s on %s: %v", name, describePg(adminCfg), err)
	}

	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testDialTimeout)
		defer cancel()
		conn, err := pgx.ConnectConfig(ctx, adminCfg)
		if err != nil {
			t.Errorf("stores: drop test database %s: %v", name, err)
			return
		}
		defer conn.Close(ctx)
		// An autovacuum worker on the test database cannot be terminated by
		// a non-superuser; it finishes quickly, so retry for a while.
		for attempt := 0; attempt < 20; attempt++ {
			if _, err = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+quoted+" WITH (FORCE)"); err == nil {
				return
			}
			time.Sleep(500 * time.Millisecond)
		}
		t.Errorf("stores: drop test database %s: %v", name, err)
	})
	return withPostgresDatabase(t, adminDSN, name)
}

// withPostgresDatabase returns dsn with its database replaced by name, for
// both URL and keyword/value DSNs.
func withPostgresDatabase(t testing.TB, dsn, name string) string {
	t.Helper()
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			t.Fatalf("stores: parse COMPANYOS_TEST_PG_DSN as URL: %v", err)
		}
		u.Path = "/" + name
		u.RawPath = ""
		return u.String()
	}
	// Keyword/value form: a later dbname overrides an earlier one.
	return dsn + " dbname=" + name
}

// TestClickHouse creates a database named test_<random> on the ClickHouse
// server at COMPANYOS_TEST_CH_ADDR (default DefaultTestClickHouseAddr, native
// protocol, user default), registers a cleanup that drops it, and returns the
// address and database name for EnsureClickHouse.
func TestClickHouse(t testing.TB) (addr, database string) {
	t.Helper()
	addr = os.Getenv("COMPANYOS_TEST_CH_ADDR")
	if addr == "" {
		addr = DefaultTestClickHouseAddr
	}
	database = "test_" + randomSuffix(t)

	ctx, cancel := context.WithTimeout(context.Background(), testDialTimeout)
	defer cancel()
	conn, err := EnsureClickHouse(ctx, addr, database)
	if err != nil {
		t.Fatalf("stores: ClickHouse unreachable at %s: %v\n%s", addr, err, upHint)
	}
	_ = conn.Close()

	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testDialTimeout)
		defer cancel()
		conn, err := EnsureClickHouse(ctx, addr, "default")
		if err != nil {
			t.Errorf("stores: drop test database %s: %v", database, err)
			return
		}
		defer conn.Close()
		if err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+database); err != nil {
			t.Errorf("stores: drop test database %s: %v", database, err)
		}
	})
	return addr, database
}

func randomSuffix(t testing.TB) string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("stores: random database name: %v", err)
	}
	return hex.EncodeToString(b[:])
}
