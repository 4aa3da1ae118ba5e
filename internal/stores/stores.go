// Package stores opens the two databases CompanyOS keeps its state in — Postgres
// (pgx pool) and ClickHouse (native protocol) — and creates the named database
// on first use, so a fresh machine needs nothing prepared by hand beyond a
// running server (deploy/local/up.sh).
//
// It owns connecting and CREATE DATABASE only. It must not create tables or run
// migrations (schemas are applied by their owners), and it reads no environment
// or flags: callers pass DSNs and addresses in. The test helpers in
// storestest.go are the one exception and read COMPANYOS_TEST_* variables.
package stores

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// ErrInvalidDatabaseName is returned (wrapped) when a ClickHouse database name
// is not a plain identifier matching ^[A-Za-z_][A-Za-z0-9_]{0,62}$.
var ErrInvalidDatabaseName = errors.New("invalid database name")

// Postgres SQLSTATEs this package reacts to.
const (
	sqlstateInvalidCatalogName = "3D000" // database does not exist
	sqlstateDuplicateDatabase  = "42P04" // lost a CREATE DATABASE race: fine
)

// clickHouseIdent is deliberately stricter than ClickHouse itself: names are
// interpolated into DDL unquoted, so only plain identifiers are allowed.
var clickHouseIdent = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,62}$`)

// EnsurePostgres connects to dsn (URL or keyword/value form). If the database
// does not exist (SQLSTATE 3D000) it connects to the same server's "postgres"
// database with the same credentials, runs CREATE DATABASE with the name as a
// quoted identifier, and reconnects. The caller owns the returned pool and
// must Close it.
func EnsurePostgres(ctx context.Context, dsn string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("stores: parse postgres dsn: %w", err)
	}
	pool, err := connectPool(ctx, cfg)
	if err == nil {
		return pool, nil
	}
	if !isPgCode(err, sqlstateInvalidCatalogName) {
		return nil, err
	}

	if err := createPostgresDatabase(ctx, cfg.ConnConfig); err != nil {
		return nil, err
	}
	// ParseConfig again: a pool config must not be reused after NewWithConfig.
	cfg, err = pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("stores: parse postgres dsn: %w", err)
	}
	return connectPool(ctx, cfg)
}

// connectPool builds a pool and pings it, because pgxpool connects lazily and
// a missing database would otherwise surface at the first query.
func connectPool(ctx context.Context, cfg *pgxpool.Config) (*pgxpool.Pool, error) {
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("stores: postgres pool for %s: %w", describePg(cfg.ConnConfig), err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("stores: connect postgres %s: %w", describePg(cfg.ConnConfig), err)
	}
	return pool, nil
}

// createPostgresDatabase creates target.Database through a maintenance
// connection to the "postgres" database on the same server.
func createPostgresDatabase(ctx context.Context, target *pgx.ConnConfig) error {
	admin := target.Copy()
	name := admin.Database
	admin.Database = "postgres"
	conn, err := pgx.ConnectConfig(ctx, admin)
	if err != nil {
		return fmt.Errorf("stores: connect postgres maintenance db to create %q: %w", name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))

	_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	if err != nil && !isPgCode(err, sqlstateDuplicateDatabase) {
		return fmt.Errorf("stores: create postgres database %q: %w", name, err)
	}
	return nil
}

func isPgCode(err error, code string) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == code
}

// describePg names a server and database for error messages without the
// password.
func describePg(c *pgx.ConnConfig) string {
	return fmt.Sprintf("%s@%s:%d/%s", c.User, c.Host, c.Port, c.Database)
}

// ClickHouseOption changes how EnsureClickHouse connects.
type ClickHouseOption func(*clickhouse.Options)

// WithClickHouseAuth logs in as user with password instead of the default
// user with no password.
func WithClickHouseAuth(user, password string) ClickHouseOption {
	return func(o *clickhouse.Options) {
		o.Auth.Username = user
		o.Auth.Password = password
	}
}

// EnsureClickHouse connects over the native protocol to addr (host:port) as
// user "default" with no password unless an option says otherwise, runs
// CREATE DATABASE IF NOT EXISTS database, and returns a connection whose
// default database is database. The HTTP protocol is not used: ClickHouse
// 18.16, which Debian ships, rejects the driver's HTTP handshake. The caller
// owns the returned connection and must Close it.
func EnsureClickHouse(ctx context.Context, addr, database string, opts ...ClickHouseOption) (driver.Conn, error) {
	if !clickHouseIdent.MatchString(database) {
		return nil, fmt.Errorf("stores: clickhouse database %q: %w", database, ErrInvalidDatabaseName)
	}

	// The database may not exist yet, and the handshake fails for a missing
	// one, so create it through a connection to "default" first.
	admin, err := openClickHouse(ctx, addr, "default", opts)
	if err != nil {
		return nil, err
	}
	err = admin.Exec(ctx, "CREATE DATABASE IF NOT EXISTS "+database)
	closeErr := admin.Close()
	if err != nil {
		return nil, fmt.Errorf("stores: create clickhouse database %s on %s: %w", database, addr, err)
	}
	if closeErr != nil {
		return nil, fmt.Errorf("stores: close clickhouse admin connection: %w", closeErr)
	}
	return openClickHouse(ctx, addr, database, opts)
}

func openClickHouse(ctx context.Context, addr, database string, opts []ClickHouseOption) (driver.Conn, error) {
	o := &clickhouse.Options{
		Protocol:    clickhouse.Native,
		Addr:        []string{addr},
		Auth:        clickhouse.Auth{Database: database, Username: "default"},
		DialTimeout: 10 * time.Second,
	}
	for _, opt := range opts {
		opt(o)
	}
	conn, err := clickhouse.Open(o)
	if err != nil {
		return nil, fmt.Errorf("stores: open clickhouse %s/%s: %w", addr, database, err)
	}
	if err := conn.Ping(ctx); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("stores: connect clickhouse %s/%s: %w", addr, database, err)
	}
	return conn, nil
}
