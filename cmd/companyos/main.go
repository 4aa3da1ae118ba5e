// Command companyos is the single CompanyOS binary: it parses flags and
// environment into a config, hands it to the composition root (package app)
// and runs it. No business logic lives here.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/companyos/companyos/app"
	"github.com/companyos/companyos/auth"
	"github.com/companyos/companyos/internal/keyfile"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

const usage = `companyos — auditable company operations: policy-checked commands become
signed, hash-chained receipts in Kafka.

Usage:
  companyos <command> [flags]

Commands:
  dev       run everything on one machine with an embedded Kafka broker
  serve     run against an external Kafka cluster (--kafka-brokers)
  token     issue bearer tokens (dev): companyos token issue --help
  migrate   create the Postgres database if needed and apply the schema migrations
  fixture   generated data through the real paths: fixture graph (company graph), fixture metering (usage + prices)
  loadgen   graph query load against a running server (p50/p95/p99, server graph_query_ms)
  policy    policy bundle tools: test (scenario matrix), coverage, docs, simulate (blast radius)
  export    an evidence bundle (tar.gz) of a tenant's receipts for a period, with proofs and keys
  verify    verify an evidence bundle offline: signatures, chain, Merkle proofs, checkpoints, manifest
  replay    audit replay: re-read the log, re-verify it, rebuild the ledger in a shadow schema and diff
  evidence  the content-addressed evidence store: stats, compact, get
  dlq       the dead-letter topic: list, show, replay
  finops    finops report: ClickHouse COGS against a staged fixture's expected costs, anomalies found
  version   print the version

Every flag can also be set with an environment variable COMPANYOS_<NAME>,
e.g. --data-dir=/srv/cos is COMPANYOS_DATA_DIR=/srv/cos.
Run "companyos <command> --help" for the flags of a command.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "dev":
		return runServer(app.ModeDev, args[1:], stderr)
	case "serve":
		return runServer(app.ModeServe, args[1:], stderr)
	case "token":
		return runToken(args[1:], stdout, stderr)
	case "migrate":
		return runMigrate(args[1:], stdout, stderr)
	case "fixture":
		return runFixture(args[1:], stdout, stderr)
	case "loadgen":
		return runLoadgen(args[1:], stdout, stderr)
	case "policy":
		return runPolicy(context.Background(), args[1:], stdout, stderr)
	case "replay":
		return runReplay(context.Background(), args[1:], stdout, stderr)
	case "export":
		if err := runExport(context.Background(), args[1:], stdout, stderr); err != nil {
			fmt.Fprintln(stderr, "companyos export:", err)
			return 1
		}
		return 0
	case "verify":
		return runVerify(context.Background(), args[1:], stdout, stderr)
	case "evidence":
		return runEvidence(context.Background(), args[1:], stdout, stderr)
	case "dlq":
		return runDLQ(context.Background(), args[1:], stdout, stderr)
	case "finops":
		if len(args) > 1 && args[1] == "report" {
			return runFinopsReport(context.Background(), args[2:], stdout, stderr)
		}
		fmt.Fprint(stderr, "Usage: companyos finops report --against <expected.json> [--json]\n\nCompares ClickHouse's per-tenant daily COGS with an independently computed expectation (companyos fixture metering) and lists the anomalies found.\n")
		if len(args) > 1 && (args[1] == "-h" || args[1] == "--help" || args[1] == "help") {
			return 0
		}
		return 2
	case "version", "--version":
		fmt.Fprintln(stdout, "companyos", version)
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "companyos: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
}

// parse parses args, then fills every flag not given on the command line
// from COMPANYOS_<FLAG_NAME> (dashes become underscores).
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] {
			return
		}
		env := "COMPANYOS_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok {
			if err := f.Value.Set(v); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", env, err))
			}
		}
	})
	return errors.Join(errs...)
}

type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error {
	*l = nil
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

func runServer(mode string, args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("companyos "+mode, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg app.Config
	cfg.Mode = mode
	var brokers, roles listFlag
	var logLevel string
	var validate bool
	fs.StringVar(&cfg.DataDir, "data-dir", "./.data", "directory for keys, the admin token and (dev) Kafka data")
	fs.StringVar(&cfg.HTTPAddr, "http-addr", "127.0.0.1:8080", "API listen address")
	fs.StringVar(&cfg.MetricsAddr, "metrics-addr", "127.0.0.1:9090", "listen address for /metrics, /healthz/live, /healthz/ready")
	fs.StringVar(&cfg.PGDSN, "pg-dsn", "postgres://companyos:companyos@127.0.0.1:5432/companyos?sslmode=disable", "Postgres DSN (the database is created when missing)")
	fs.StringVar(&cfg.ClickHouseAddr, "clickhouse-addr", "127.0.0.1:9000", "ClickHouse native-protocol address")
	fs.StringVar(&cfg.ClickHouseDatabase, "clickhouse-database", "companyos", "ClickHouse database (created when missing)")
	fs.IntVar(&cfg.Partitions, "partitions", 6, "partitions of the CompanyOS topics when they are created")
	fs.StringVar(&cfg.InstanceID, "instance-id", "", "processor identity: static group member and transactional id (default: dev, or the host name in serve)")
	fs.StringVar(&cfg.TokenIssuer, "token-issuer", "companyos", "expected iss claim of bearer tokens")
	fs.Float64Var(&cfg.RatePerTenant, "rate-per-tenant", 2000, "sustained commands per second per tenant (token bucket)")
	fs.IntVar(&cfg.Burst, "burst", 0, "token bucket size per tenant (default 2 × rate)")
	fs.IntVar(&cfg.MaxInFlight, "max-inflight", 4096, "commands waiting for a decision before new ones are shed with 429")
	fs.DurationVar(&cfg.CommandTimeout, "command-timeout", 10*time.Second, "end-to-end bound for one command")
	fs.DurationVar(&cfg.PolicyTimeout, "policy-timeout", time.Second, "bound on one policy evaluation; exceeding it denies (fail closed)")
	fs.DurationVar(&cfg.ShutdownGrace, "shutdown-grace", 15*time.Second, "how long shutdown waits for in-flight commands")
	fs.DurationVar(&cfg.SnapshotInterval, "snapshot-interval", time.Minute, "how often the graph read model is snapshotted (also on shutdown)")
	fs.DurationVar(&cfg.ConsistencyTimeout, "consistency-timeout", 5*time.Second, "how long a query with a consistency token waits for the graph to catch up")
	fs.StringVar(&cfg.LedgerKeyFile, "ledger-key-file", "", "provenance checkpoint signing key, PEM PKCS#8 Ed25519 (dev default: <data-dir>/ledger.key, created)")
	fs.StringVar(&cfg.KeystoreKeyFile, "keystore-key-file", "", "key-encryption key (32 raw bytes) of the selective-disclosure keystore (dev default: <data-dir>/keystore.key, created; serve: required)")
	selective := listFlag{"email", "phone", "ssn", "salary", "date_of_birth", "home_address"}
	fs.Var(&selective, "selective-attrs", "entity attributes always committed as salted hashes instead of stored in receipts (selective disclosure); commands may name more")
	fs.DurationVar(&cfg.CheckpointInterval, "checkpoint-interval", 10*time.Second, "how often the ledger signs a checkpoint for each tenant whose tree grew")
	fs.BoolVar(&cfg.Pprof, "pprof", false, "serve /debug/pprof on --metrics-addr")
	fs.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	if mode == app.ModeDev {
		fs.StringVar(&cfg.KafkaAddr, "kafka-addr", "127.0.0.1:9092", "embedded Kafka broker listen address (kcat and any Kafka client can connect)")
	} else {
		fs.Var(&brokers, "kafka-brokers", "comma-separated seed brokers of the Kafka cluster (required)")
		fs.StringVar(&cfg.SigningKeyFile, "signing-key-file", "", "receipt signing key, PEM PKCS#8 Ed25519 (required)")
		fs.StringVar(&cfg.TokenKeysFile, "token-keys-file", "", `token issuer key set, JSON {"keys":[{"keyid","alg":"ed25519","public_key"}]} (required)`)
		fs.IntVar(&cfg.ReplicationFactor, "replication-factor", 3, "replication factor of topics when they are created")
		fs.Var(&roles, "roles", "components to run: api,processor (default both)")
		fs.BoolVar(&validate, "validate", false, "check the configuration and exit")
	}
	fs.Usage = func() {
		if mode == app.ModeDev {
			fmt.Fprint(stderr, "Usage: companyos dev [flags]\n\nRuns the whole stack in one process with an embedded, persistent Kafka broker.\nStart Postgres and ClickHouse first with deploy/local/up.sh.\n\nFlags (each also COMPANYOS_<NAME>):\n")
		} else {
			fmt.Fprint(stderr, "Usage: companyos serve --kafka-brokers=host:port,... [flags]\n\nRuns the same components as dev against an external Kafka cluster.\n\nFlags (each also COMPANYOS_<NAME>):\n")
		}
		fs.PrintDefaults()
	}
	if err := parse(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "companyos %s: %v\n", mode, err)
		return 2
	}
	cfg.KafkaBrokers, cfg.Roles, cfg.SelectiveAttrs = brokers, roles, selective
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(logLevel)); err != nil {
		fmt.Fprintf(stderr, "companyos %s: --log-level: %v\n", mode, err)
		return 2
	}
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl}))
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "companyos %s: invalid configuration:\n  %s\n", mode, strings.ReplaceAll(err.Error(), "\n", "\n  "))
		return 2
	}
	if validate {
		fmt.Fprintln(stderr, "configuration is valid")
		return 0
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	a, err := app.New(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "companyos %s: %v\n", mode, err)
		return 1
	}
	if err := a.Run(ctx); err != nil {
		fmt.Fprintf(stderr, "companyos %s: %v\n", mode, err)
		return 1
	}
	return 0
}

func runToken(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "issue" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			fmt.Fprint(stdout, "Usage: companyos token issue --principal user:alice --tenant pilot-1 [--mfa] [--ttl 1h]\n")
			return 0
		}
		fmt.Fprint(stderr, "Usage: companyos token issue --principal user:alice --tenant pilot-1 [--mfa] [--ttl 1h]\n")
		return 2
	}
	fs := flag.NewFlagSet("companyos token issue", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var tenants, roles listFlag
	var req auth.IssueRequest
	var dataDir, keyFile, issuer string
	fs.StringVar(&dataDir, "data-dir", "./.data", "dev data directory holding token-issuer.key")
	fs.StringVar(&keyFile, "issuer-key-file", "", "issuer private key (default <data-dir>/token-issuer.key)")
	fs.StringVar(&issuer, "token-issuer", "companyos", "iss claim")
	fs.StringVar(&req.Principal, "principal", "", "principal entity id, e.g. user:alice (required)")
	fs.Var(&tenants, "tenant", `tenant(s) the token is valid for, comma-separated, or "*" (required)`)
	fs.Var(&roles, "roles", "issuer-asserted roles, comma-separated (optional; roles normally come from the principal entity)")
	fs.BoolVar(&req.MFA, "mfa", false, "mark the token as MFA-authenticated now")
	fs.DurationVar(&req.TTL, "ttl", time.Hour, "lifetime")
	fs.Usage = func() {
		fmt.Fprint(stderr, "Usage: companyos token issue --principal user:alice --tenant pilot-1 [--mfa] [--ttl 1h]\n\nIssues a signed bearer token with the dev issuer key and prints it.\n\nFlags (each also COMPANYOS_<NAME>):\n")
		fs.PrintDefaults()
	}
	if err := parse(fs, args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "companyos token issue: %v\n", err)
		return 2
	}
	req.Tenants, req.Roles = tenants, roles
	if err := req.Validate(); err != nil {
		fmt.Fprintf(stderr, "companyos token issue: %v\n", err)
		return 2
	}
	if keyFile == "" {
		keyFile = app.DevIssuerKeyFile(dataDir)
	}
	key, err := keyfile.Load(keyFile)
	if err != nil {
		fmt.Fprintf(stderr, "companyos token issue: %v (start `companyos dev` once to create it, or pass --issuer-key-file)\n", err)
		return 1
	}
	tok, err := auth.NewIssuer(issuer, key).Issue(req)
	if err != nil {
		fmt.Fprintf(stderr, "companyos token issue: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, tok)
	return 0
}

func runMigrate(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("companyos migrate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dsn := fs.String("pg-dsn", "postgres://companyos:companyos@127.0.0.1:5432/companyos?sslmode=disable", "Postgres DSN (the database is created when missing)")
	chAddr := fs.String("clickhouse-addr", "127.0.0.1:9000", `ClickHouse native-protocol address ("" skips the ClickHouse schema)`)
	chDB := fs.String("clickhouse-database", "companyos", "ClickHouse database (created when missing)")
	timeout := fs.Duration("timeout", time.Minute, "give up after this long")
	if err := parse(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "companyos migrate:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	if err := app.Migrate(ctx, *dsn, *chAddr, *chDB); err != nil {
		fmt.Fprintln(stderr, "companyos migrate:", err)
		return 1
	}
	fmt.Fprintln(stdout, "companyos migrate: schema up to date")
	return 0
}
