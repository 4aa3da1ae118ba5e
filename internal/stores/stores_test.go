package stores_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/companyos/companyos/internal/stores"
)

// These tests run against the real servers started by deploy/local/up.sh.

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestEnsurePostgresCreatesMissingDatabaseIdempotently(t *testing.T) {
	ctx := testContext(t)
	// TestPostgres gives a scratch database on the right server; point the DSN
	// at a sibling database that does not exist yet.
	scratchDSN := stores.TestPostgres(t)
	cfg, err := pgx.ParseConfig(scratchDSN)
	if err != nil {
		t.Fatal(err)
	}
	// Mixed case and a dash prove the name is quoted, not interpolated.
	missing := cfg.Database + "_Ensure-Me"
	dsn := strings.Replace(scratchDSN, "/"+cfg.Database+"?", "/"+missing+"?", 1)
	if dsn == scratchDSN {
		t.Fatalf("could not rewrite database in DSN %q", scratchDSN)
	}
	t.Cleanup(func() { dropPostgresDatabase(t, scratchDSN, missing) })

	for i := range 2 {
		pool, err := stores.EnsurePostgres(ctx, dsn)
		if err != nil {
			t.Fatalf("EnsurePostgres call %d: %v", i+1, err)
		}
		var got string
		if err := pool.QueryRow(ctx, "SELECT current_database()").Scan(&got); err != nil {
			pool.Close()
			t.Fatalf("call %d: query: %v", i+1, err)
		}
		pool.Close()
		if got != missing {
			t.Fatalf("call %d: current_database() = %q, want %q", i+1, got, missing)
		}
	}
}

func TestEnsurePostgresReportsUnreachableServer(t *testing.T) {
	ctx := testContext(t)
	// Port 1 on loopback: nothing listens there, so the dial is refused fast.
	_, err := stores.EnsurePostgres(ctx, "postgres://u:p@127.0.0.1:1/x?sslmode=disable&connect_timeout=2")
	if err == nil {
		t.Fatal("EnsurePostgres succeeded against a closed port")
	}
	if strings.Contains(err.Error(), ":p@") {
		t.Errorf("error leaks the password: %v", err)
	}
}

func dropPostgresDatabase(t *testing.T, dsn, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Errorf("drop %s: %v", name, err)
		return
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		t.Errorf("drop %s: %v", name, err)
	}
}

func TestEnsureClickHouseCreatesDatabaseAndRoundTrips(t *testing.T) {
	ctx := testContext(t)
	addr, scratch := stores.TestClickHouse(t)
	// A database that does not exist yet; dropped with the scratch one below.
	database := scratch + "_ensure"
	t.Cleanup(func() {
		conn, err := stores.EnsureClickHouse(context.Background(), addr, "default")
		if err != nil {
			t.Errorf("drop %s: %v", database, err)
			return
		}
		defer conn.Close()
		if err := conn.Exec(context.Background(), "DROP DATABASE IF EXISTS "+database); err != nil {
			t.Errorf("drop %s: %v", database, err)
		}
	})

	for i := range 2 {
		conn, err := stores.EnsureClickHouse(ctx, addr, database)
		if err != nil {
			t.Fatalf("EnsureClickHouse call %d: %v", i+1, err)
		}
		_ = conn.Close()
	}

	conn, err := stores.EnsureClickHouse(ctx, addr, database)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	var current string
	if err := conn.QueryRow(ctx, "SELECT currentDatabase()").Scan(&current); err != nil {
		t.Fatal(err)
	}
	if current != database {
		t.Fatalf("currentDatabase() = %q, want %q", current, database)
	}

	// Unqualified table name: proves the connection is bound to the database.
	if err := conn.Exec(ctx, `CREATE TABLE roundtrip (id UInt64, name String) ENGINE = MergeTree() ORDER BY id`); err != nil {
		t.Fatal(err)
	}
	// ClickHouse 18.16 needs the explicit column list for PrepareBatch.
	batch, err := conn.PrepareBatch(ctx, "INSERT INTO roundtrip (id, name)")
	if err != nil {
		t.Fatal(err)
	}
	want := map[uint64]string{1: "alpha", 2: "beta", 3: "gamma"}
	for id, name := range want {
		if err := batch.Append(id, name); err != nil {
			t.Fatal(err)
		}
	}
	if err := batch.Send(); err != nil {
		t.Fatal(err)
	}

	rows, err := conn.Query(ctx, "SELECT id, name FROM roundtrip ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	got := map[uint64]string{}
	for rows.Next() {
		var (
			id   uint64
			name string
		)
		if err := rows.Scan(&id, &name); err != nil {
			t.Fatal(err)
		}
		got[id] = name
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("read back %v, want %v", got, want)
	}
	for id, name := range want {
		if got[id] != name {
			t.Errorf("id %d: got %q, want %q", id, got[id], name)
		}
	}
}

func TestEnsureClickHouseRejectsInvalidIdentifiers(t *testing.T) {
	ctx := testContext(t)
	bad := []string{
		"",
		"1abc",
		"has-dash",
		"has space",
		"semi;colon",
		"x; DROP DATABASE default",
		"`quoted`",
		"ünicode",
		strings.Repeat("a", 64),
	}
	for _, name := range bad {
		// The address is never dialed: validation comes first.
		conn, err := stores.EnsureClickHouse(ctx, "127.0.0.1:1", name)
		if conn != nil {
			_ = conn.Close()
		}
		if !errors.Is(err, stores.ErrInvalidDatabaseName) {
			t.Errorf("EnsureClickHouse(%q) error = %v, want ErrInvalidDatabaseName", name, err)
		}
	}
	// 63 characters is the longest accepted name.
	if _, err := stores.EnsureClickHouse(ctx, "127.0.0.1:1", strings.Repeat("a", 63)); errors.Is(err, stores.ErrInvalidDatabaseName) {
		t.Errorf("63-character name rejected: %v", err)
	}
}
