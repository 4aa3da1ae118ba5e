package cogs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/companyos/companyos/schemas"
)

// Migration is one numbered DDL file of schemas/clickhouse.
type Migration struct {
	Version    uint32
	Name       string   // file name
	Statements []string // in order
}

// Migrations returns the embedded migrations (schemas/clickhouse/NNNN_*.sql)
// in version order.
func Migrations() ([]Migration, error) {
	return readMigrations(schemas.ClickHouse, "clickhouse")
}

func readMigrations(fsys fs.FS, dir string) ([]Migration, error) {
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("cogs: migrations: %w", err)
	}
	var out []Migration
	seen := map[uint32]string{}
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !strings.HasSuffix(name, ".sql") {
			continue
		}
		num, _, ok := strings.Cut(name, "_")
		v, err := strconv.ParseUint(num, 10, 32)
		if !ok || err != nil || v == 0 {
			return nil, fmt.Errorf("cogs: migration %s: name must be NNNN_description.sql", name)
		}
		if prev, dup := seen[uint32(v)]; dup {
			return nil, fmt.Errorf("cogs: migrations %s and %s share version %d", prev, name, v)
		}
		seen[uint32(v)] = name
		b, err := fs.ReadFile(fsys, dir+"/"+name)
		if err != nil {
			return nil, fmt.Errorf("cogs: migration %s: %w", name, err)
		}
		stmts := SplitStatements(string(b))
		if len(stmts) == 0 {
			return nil, fmt.Errorf("cogs: migration %s: no statements", name)
		}
		out = append(out, Migration{Version: uint32(v), Name: name, Statements: stmts})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	return out, nil
}

// SplitStatements splits a SQL file into statements. Whole-line "--"
// comments are dropped; a statement ends at a line ending with ";" (the
// native protocol runs one statement per query).
func SplitStatements(sql string) []string {
	var out []string
	var cur []string
	flush := func() {
		s := strings.TrimSpace(strings.Join(cur, "\n"))
		s = strings.TrimSpace(strings.TrimSuffix(s, ";"))
		if s != "" {
			out = append(out, s)
		}
		cur = cur[:0]
	}
	for _, line := range strings.Split(sql, "\n") {
		t := strings.TrimSpace(line)
		if t == "" || strings.HasPrefix(t, "--") {
			continue
		}
		cur = append(cur, line)
		if strings.HasSuffix(t, ";") {
			flush()
		}
	}
	flush()
	return out
}

// Migrate applies every embedded migration whose version is not yet
// recorded in schema_migrations, then records it. ClickHouse has no
// transactions, so every statement is idempotent (IF NOT EXISTS): a
// migration interrupted half-way is simply applied again, and two processes
// migrating at once do no harm. Migrate is idempotent.
func Migrate(ctx context.Context, conn driver.Conn) error {
	ms, err := Migrations()
	if err != nil {
		return err
	}
	return migrate(ctx, conn, ms)
}

func migrate(ctx context.Context, conn driver.Conn, ms []Migration) error {
	// ReplacingMergeTree: a version recorded twice (two migrators) collapses.
	if err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations
		(version UInt32, name String, applied_at DateTime('UTC'))
		ENGINE = ReplacingMergeTree() ORDER BY version`); err != nil {
		return fmt.Errorf("cogs: migrate: schema_migrations: %w", err)
	}
	applied, err := appliedVersions(ctx, conn)
	if err != nil {
		return err
	}
	for _, m := range ms {
		if applied[m.Version] {
			continue
		}
		for i, s := range m.Statements {
			if err := conn.Exec(ctx, s); err != nil {
				return fmt.Errorf("cogs: migration %s statement %d: %w", m.Name, i+1, err)
			}
		}
		if err := recordMigration(ctx, conn, m); err != nil {
			return fmt.Errorf("cogs: migration %s: record: %w", m.Name, err)
		}
	}
	return nil
}

func recordMigration(ctx context.Context, conn driver.Conn, m Migration) error {
	b, err := conn.PrepareBatch(ctx, "INSERT INTO schema_migrations (version, name, applied_at)")
	if err != nil {
		return err
	}
	if err := b.Append(m.Version, m.Name, time.Now().UTC().Truncate(time.Second)); err != nil {
		_ = b.Abort()
		return err
	}
	return b.Send()
}

func appliedVersions(ctx context.Context, conn driver.Conn) (map[uint32]bool, error) {
	rows, err := conn.Query(ctx, "SELECT DISTINCT version FROM schema_migrations")
	if err != nil {
		return nil, fmt.Errorf("cogs: migrate: read schema_migrations: %w", err)
	}
	defer rows.Close()
	out := map[uint32]bool{}
	for rows.Next() {
		var v uint32
		if err := rows.Scan(&v); err != nil {
			return nil, fmt.Errorf("cogs: migrate: read schema_migrations: %w", err)
		}
		out[v] = true
	}
	return out, rows.Err()
}

// ErrNotMigrated is returned (wrapped) when the COGS tables are missing.
var ErrNotMigrated = errors.New("cogs: ClickHouse database not migrated (run companyos migrate)")

// CheckMigrated returns ErrNotMigrated unless every embedded migration is
// recorded.
func CheckMigrated(ctx context.Context, conn driver.Conn) error {
	ms, err := Migrations()
	if err != nil {
		return err
	}
	applied, err := appliedVersions(ctx, conn)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNotMigrated, err)
	}
	for _, m := range ms {
		if !applied[m.Version] {
			return fmt.Errorf("%w: %s not applied", ErrNotMigrated, m.Name)
		}
	}
	return nil
}
