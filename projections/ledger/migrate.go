package ledger

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/companyos/companyos/schemas"
)

// migrationLock is the pg_advisory_xact_lock key that serialises migrators
// (several instances starting at once): any fixed int64 that no other
// CompanyOS lock uses.
const migrationLock int64 = 0x636f732d6d696772 // "cos-migr"

// Migration is one numbered SQL file.
type Migration struct {
	Version int64
	Name    string // file name
	SQL     string
}

// Migrations returns the embedded migrations (schemas/postgres/NNNN_*.up.sql)
// in version order.
func Migrations() ([]Migration, error) {
	return readMigrations(schemas.Postgres, "postgres")
}

func readMigrations(fsys fs.FS, dir string) ([]Migration, error) {
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("ledger: migrations: %w", err)
	}
	var out []Migration
	seen := map[int64]string{}
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !strings.HasSuffix(name, ".up.sql") {
			continue
		}
		num, _, ok := strings.Cut(name, "_")
		v, err := strconv.ParseInt(num, 10, 64)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("ledger: migration %s: name must be NNNN_description.up.sql", name)
		}
		if prev, dup := seen[v]; dup {
			return nil, fmt.Errorf("ledger: migrations %s and %s share version %d", prev, name, v)
		}
		seen[v] = name
		b, err := fs.ReadFile(fsys, dir+"/"+name)
		if err != nil {
			return nil, fmt.Errorf("ledger: migration %s: %w", name, err)
		}
		out = append(out, Migration{Version: v, Name: name, SQL: string(b)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	return out, nil
}

// Migrate applies every embedded migration not yet recorded in
// schema_migrations, each in its own transaction together with its
// schema_migrations row, so a migration is applied entirely or not at all.
// It is idempotent and safe to run from several processes at once: each
// transaction first takes a transaction-scoped advisory lock and re-checks.
func Migrate(ctx context.Context, pool *pgxpool.Pool) error {
	ms, err := Migrations()
	if err != nil {
		return err
	}
	return migrate(ctx, pool, ms)
}

func migrate(ctx context.Context, pool *pgxpool.Pool, ms []Migration) error {
	for _, m := range ms {
		if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", migrationLock); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
				version    bigint      PRIMARY KEY,
				name       text        NOT NULL,
				applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
				return err
			}
			var applied bool
			if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = $1)", m.Version).Scan(&applied); err != nil {
				return err
			}
			if applied {
				return nil
			}
			// No arguments: pgx uses the simple protocol, which runs a
			// multi-statement file as written.
			if _, err := tx.Exec(ctx, m.SQL); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", m.Version, m.Name)
			return err
		}); err != nil {
			return fmt.Errorf("ledger: migration %s: %w", m.Name, err)
		}
	}
	return nil
}

// ErrNotMigrated is returned (wrapped) when the ledger tables are missing.
var ErrNotMigrated = errors.New("ledger: database not migrated (run companyos migrate)")
