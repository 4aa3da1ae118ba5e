// Package app is the composition root: it turns a validated Config into
// running components (embedded broker, processor, command API, metrics) and
// shuts them down in reverse order. It holds no business logic; tests build
// the same App the binary runs.
package app

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/errgroup"

	"github.com/companyos/companyos/auth"
	"github.com/companyos/companyos/commands"
	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/evidence"
	"github.com/companyos/companyos/internal/httpx"
	"github.com/companyos/companyos/internal/keyfile"
	"github.com/companyos/companyos/internal/keystore"
	"github.com/companyos/companyos/internal/stores"
	"github.com/companyos/companyos/metering"
	"github.com/companyos/companyos/policy"
	"github.com/companyos/companyos/projections/graph"
	"github.com/companyos/companyos/projections/cogs"
	"github.com/companyos/companyos/projections/ledger"
	"github.com/companyos/companyos/schemas"
)

// Mode selects where Kafka comes from.
const (
	ModeDev   = "dev"   // embedded kfake broker, keys generated under DataDir
	ModeServe = "serve" // external Kafka cluster, keys from files
)

// Config is everything the process needs. cmd/companyos fills it from flags
// and COMPANYOS_* environment variables.
type Config struct {
	Mode string
	// DataDir holds keys, the admin token and (dev) the broker's data.
	// Default "./.data".
	DataDir string
	// HTTPAddr serves the API. Default 127.0.0.1:8080.
	HTTPAddr string
	// MetricsAddr serves /metrics and /healthz/*. Default 127.0.0.1:9090.
	MetricsAddr string
	// KafkaAddr is the embedded broker's listener (dev). Default 127.0.0.1:9092.
	KafkaAddr string
	// KafkaBrokers are an external cluster's seed brokers (serve, required).
	KafkaBrokers []string
	// Partitions for topics created on first start. Default 6.
	Partitions int
	// ReplicationFactor for topics created on first start. Default 1 in dev, 3 in serve.
	ReplicationFactor int
	// PGDSN is the Postgres DSN; the database is created when missing.
	PGDSN string
	// ClickHouseAddr (native protocol) and ClickHouseDatabase (created when missing).
	ClickHouseAddr     string
	ClickHouseDatabase string
	// InstanceID names this process in the processor group. Default "dev" in
	// dev mode, the host name in serve mode.
	InstanceID string
	// SigningKeyFile is the receipt signing key (PEM PKCS#8 Ed25519). Dev
	// default DataDir/signing.key (created); serve: required.
	SigningKeyFile string
	// TokenKeysFile is the token issuer key set (JSON, as /v1/keys). Serve:
	// required. Dev uses DataDir/token-issuer.key (created).
	TokenKeysFile string
	// TokenIssuer is the expected "iss" of bearer tokens. Default "companyos".
	TokenIssuer string
	// Roles selects components in serve mode: "api", "processor", "ledger",
	// "cogs" (default all four; run one cogs instance per ClickHouse
	// database). Several "ledger" instances may run: one writes,
	// the others stand by (Postgres advisory lock).
	Roles []string
	// LedgerKeyFile is the checkpoint signing key of the provenance ledger
	// (PEM PKCS#8 Ed25519), distinct from the receipt signing key. Dev
	// default DataDir/ledger.key (created); serve: required.
	LedgerKeyFile string
	// KeystoreKeyFile is the key-encryption key of the selective-disclosure
	// keystore (32 raw bytes). Dev default DataDir/keystore.key (created);
	// serve: required.
	KeystoreKeyFile string
	// SelectiveAttrs are entity attributes always committed instead of
	// stored in receipts (selective disclosure). Default none.
	SelectiveAttrs []string
	// CheckpointInterval between ledger checkpoints. Default 10s.
	CheckpointInterval time.Duration
	// RatePerTenant, Burst, MaxInFlight, CommandTimeout: write-path limits
	// (defaults 2000/s, 4000, 4096, 10s).
	RatePerTenant  float64
	Burst          int
	MaxInFlight    int
	CommandTimeout time.Duration
	// PolicyTimeout bounds one policy evaluation; exceeding it is a deny
	// (fail closed). Default 1s: generous, because a deny caused by a busy
	// machine would still be a signed, permanent receipt.
	PolicyTimeout time.Duration
	// SnapshotInterval between graph snapshots (one is also written on
	// shutdown). Default 1m.
	SnapshotInterval time.Duration
	// ConsistencyTimeout bounds a read-your-writes wait. Default 5s.
	ConsistencyTimeout time.Duration
	// Pprof serves /debug/pprof on the telemetry listener (off by default).
	Pprof bool
	// ShutdownGrace bounds draining on shutdown. Default 15s.
	ShutdownGrace time.Duration
	Logger        *slog.Logger
}

// Defaults fills unset fields.
func (c *Config) Defaults() {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&c.Mode, ModeDev)
	def(&c.DataDir, "./.data")
	def(&c.HTTPAddr, "127.0.0.1:8080")
	def(&c.MetricsAddr, "127.0.0.1:9090")
	def(&c.KafkaAddr, "127.0.0.1:9092")
	def(&c.PGDSN, "postgres://companyos:companyos@127.0.0.1:5432/companyos?sslmode=disable")
	def(&c.ClickHouseAddr, "127.0.0.1:9000")
	def(&c.ClickHouseDatabase, "companyos")
	def(&c.TokenIssuer, "companyos")
	if c.Partitions <= 0 {
		c.Partitions = 6
	}
	if c.ReplicationFactor <= 0 {
		c.ReplicationFactor = 1
		if c.Mode == ModeServe {
			c.ReplicationFactor = 3
		}
	}
	if c.InstanceID == "" {
		c.InstanceID = "dev"
		if c.Mode == ModeServe {
			c.InstanceID, _ = os.Hostname()
		}
	}
	if c.Mode == ModeDev {
		def(&c.SigningKeyFile, filepath.Join(c.DataDir, "signing.key"))
		def(&c.LedgerKeyFile, filepath.Join(c.DataDir, "ledger.key"))
		def(&c.KeystoreKeyFile, filepath.Join(c.DataDir, "keystore.key"))
	}
	if len(c.Roles) == 0 {
		c.Roles = []string{"api", "processor", "ledger", "cogs"}
	}
	if c.PolicyTimeout <= 0 {
		c.PolicyTimeout = time.Second
	}
	if c.ShutdownGrace <= 0 {
		c.ShutdownGrace = 15 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate reports every invalid field, naming its flag.
func (c Config) Validate() error {
	var errs []error
	switch c.Mode {
	case ModeDev:
	case ModeServe:
		if len(c.KafkaBrokers) == 0 {
			errs = append(errs, errors.New("--kafka-brokers: required in serve mode"))
		}
		if c.SigningKeyFile == "" {
			errs = append(errs, errors.New("--signing-key-file: required in serve mode"))
		}
		if c.TokenKeysFile == "" {
			errs = append(errs, errors.New("--token-keys-file: required in serve mode"))
		}
		if c.LedgerKeyFile == "" {
			errs = append(errs, errors.New("--ledger-key-file: required in serve mode"))
		}
		if c.KeystoreKeyFile == "" {
			errs = append(errs, errors.New("--keystore-key-file: required in serve mode"))
		}
	default:
		errs = append(errs, fmt.Errorf("mode %q: want dev or serve", c.Mode))
	}
	for name, addr := range map[string]string{"--http-addr": c.HTTPAddr, "--metrics-addr": c.MetricsAddr, "--kafka-addr": c.KafkaAddr, "--clickhouse-addr": c.ClickHouseAddr} {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			errs = append(errs, fmt.Errorf("%s: %q is not host:port", name, addr))
		}
	}
	for _, b := range c.KafkaBrokers {
		if _, _, err := net.SplitHostPort(b); err != nil {
			errs = append(errs, fmt.Errorf("--kafka-brokers: %q is not host:port", b))
		}
	}
	for _, r := range c.Roles {
		if r != "api" && r != "processor" && r != "ledger" && r != "cogs" {
			errs = append(errs, fmt.Errorf("--roles: unknown role %q (api, processor, ledger, cogs)", r))
		}
	}
	if c.Partitions > 1000 {
		errs = append(errs, errors.New("--partitions: at most 1000"))
	}
	return errors.Join(errs...)
}

func (c Config) has(role string) bool {
	for _, r := range c.Roles {
		if r == role {
			return true
		}
	}
	return false
}

// App is a wired CompanyOS process.
type App struct {
	cfg      Config
	log      *slog.Logger
	reg      *prometheus.Registry
	broker   *events.Broker
	brokers  []string
	producer *kgo.Client
	pg       *pgxpool.Pool
	ch       driver.Conn

	processor *commands.Processor
	waiter    *commands.Waiter
	index     *commands.ReceiptIndex
	api       *commands.API
	projector *graph.Projector
	ledgerP   *ledger.Projector
	cogsP     *cogs.Projector

	apiSrv, metricsSrv *http.Server
	apiLn, metricsLn   net.Listener

	// AdminToken is the bootstrap admin token (dev mode).
	AdminToken string
	// SigningKeyID names the receipt signing key.
	SigningKeyID string
	// TokenIssuer signs tokens in dev mode (nil in serve mode).
	TokenIssuer *auth.Issuer

	policy      *policy.Reloadable
	receiptKeys keyfile.KeySet

	ready   atomic.Bool
	closers []func()
}

// ledgerEvidence adapts the evidence store to the ledger: erasing a blob
// that is already gone is done.
type ledgerEvidence struct{ *evidence.Store }

func (e ledgerEvidence) Delete(ctx context.Context, hash string) error {
	if err := e.Store.Delete(ctx, hash); err != nil && !errors.Is(err, evidence.ErrNotFound) {
		return err
	}
	return nil
}

// discloseAuthorizer asks the policy whether the caller may see selective
// fields of a subject (action provenance.disclose, a step-up action).
func discloseAuthorizer(engine *policy.Reloadable, stepUp httpx.StepUp) ledger.DiscloseAuthorizer {
	return func(ctx context.Context, c auth.Claims, tenant, subject string, fields []string) ledger.DiscloseDecision {
		if stepUp.Required(c, "provenance.disclose", time.Now()) {
			return ledger.DiscloseDecision{StepUp: &stepUp}
		}
		age := int64(-1)
		if c.MFA && !c.AuthTime.IsZero() {
			age = max(0, int64(time.Since(c.AuthTime)/time.Second))
		}
		d := engine.Decide(ctx, policy.Input{Action: "provenance.disclose", Tenant: tenant,
			Principal: policy.Principal{ID: c.Principal, Roles: c.Roles, MFA: c.MFA, MFAAgeSeconds: age, Attrs: map[string]any{}},
			Resource:  policy.Resource{ID: subject, Attrs: map[string]any{"fields": fields}, Exists: true}})
		b, _ := json.Marshal(d.Rationale)
		return ledger.DiscloseDecision{Allow: d.Allow, Rationale: b}
	}
}

// loadKEK reads (dev: creates) the keystore's key-encryption key.
func (a *App) loadKEK() ([]byte, error) {
	if a.cfg.Mode == ModeDev {
		k, err := keystore.LoadOrCreateKEK(a.cfg.KeystoreKeyFile)
		if err != nil {
			return nil, fmt.Errorf("--keystore-key-file: %w", err)
		}
		return k, nil
	}
	b, err := os.ReadFile(a.cfg.KeystoreKeyFile)
	if err != nil {
		return nil, fmt.Errorf("--keystore-key-file: %w", err)
	}
	if len(b) != keystore.KEKSize {
		return nil, fmt.Errorf("--keystore-key-file: %s holds %d bytes, want %d", a.cfg.KeystoreKeyFile, len(b), keystore.KEKSize)
	}
	return b, nil
}

// New wires every component. On error, everything already started is closed.
func New(ctx context.Context, cfg Config) (a *App, err error) {
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	a = &App{cfg: cfg, log: cfg.Logger, reg: prometheus.NewRegistry()}
	defer func(built *App) { // a is already nil here when New returns (nil, err)
		if err != nil {
			built.close()
			a = nil
		}
	}(a)
	a.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("--data-dir: %w", err)
	}

	signingKey, created, err := loadSigningKey(cfg)
	if err != nil {
		return nil, err
	}
	signer := events.NewSigner(signingKey)
	a.SigningKeyID = signer.KeyID()
	if created {
		a.log.Info("created receipt signing key", "keyid", signer.KeyID(), "file", cfg.SigningKeyFile)
	}
	verifier, err := a.tokenVerifier()
	if err != nil {
		return nil, err
	}

	switch cfg.Mode {
	case ModeDev:
		a.broker, err = events.StartBroker(events.BrokerConfig{Addr: cfg.KafkaAddr, DataDir: cfg.DataDir, Partitions: cfg.Partitions})
		if err != nil {
			return nil, err
		}
		a.closers = append(a.closers, a.broker.Close)
		a.brokers = a.broker.Addrs()
	case ModeServe:
		a.brokers = cfg.KafkaBrokers
	}

	a.producer, err = kgo.NewClient(
		kgo.SeedBrokers(a.brokers...),
		kgo.ProducerLinger(0),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)),
	)
	if err != nil {
		return nil, fmt.Errorf("kafka client: %w", err)
	}
	a.closers = append(a.closers, a.producer.Close)
	tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := events.EnsureTopics(tctx, a.producer, events.TopicsConfig{Partitions: int32(cfg.Partitions), ReplicationFactor: int16(cfg.ReplicationFactor)}); err != nil {
		return nil, fmt.Errorf("kafka %v: %w", a.brokers, err)
	}

	if err := a.openStores(ctx); err != nil {
		return nil, err
	}
	// Idempotent and safe when several instances start at once (advisory
	// lock); `companyos migrate` runs the same thing ahead of a rollout.
	if err := ledger.Migrate(tctx, a.pg); err != nil {
		return nil, fmt.Errorf("postgres migrations: %w", err)
	}
	ledgerKey, err := loadKey(cfg, cfg.LedgerKeyFile, "--ledger-key-file")
	if err != nil {
		return nil, err
	}
	checkpointSigner := ledger.CheckpointSigner{Name: "companyos-ledger", Key: ledgerKey}
	kek, err := a.loadKEK()
	if err != nil {
		return nil, err
	}
	subjectKeys, err := keystore.New(a.pg, kek)
	if err != nil {
		return nil, err
	}
	receiptKeys := keyfile.KeySet{Keys: []keyfile.PublicKey{signer.Public()}}
	if cfg.has("ledger") {
		ev, err := evidence.New(evidence.Config{Pool: a.pg, Registerer: a.reg})
		if err != nil {
			return nil, err
		}
		a.closers = append(a.closers, ev.Close)
		a.ledgerP, err = ledger.NewProjector(ledger.Config{Brokers: a.brokers, Pool: a.pg, Signer: checkpointSigner, Keys: &receiptKeys,
			CheckpointInterval: cfg.CheckpointInterval, Logger: a.log, Registerer: a.reg, Evidence: ledgerEvidence{ev}})
		if err != nil {
			return nil, err
		}
	}

	if err := cogs.Migrate(tctx, a.ch); err != nil {
		return nil, fmt.Errorf("clickhouse migrations: %w", err)
	}
	if cfg.has("cogs") {
		a.cogsP, err = cogs.NewProjector(cogs.Config{Brokers: a.brokers, Conn: a.ch, InstanceID: "cogs-" + cfg.InstanceID,
			ReceiptKeys: &receiptKeys, Logger: a.log, Registerer: a.reg})
		if err != nil {
			return nil, err
		}
	}
	priceRules, err := cogs.DefaultRules()
	if err != nil {
		return nil, err
	}

	httpMetrics := httpx.NewMetrics(a.reg)
	bundle, err := fs.Sub(schemas.Policy, "policy")
	if err != nil {
		return nil, err
	}
	baseEngine, err := policy.New(ctx, policy.Config{Bundle: bundle, Timeout: cfg.PolicyTimeout})
	if err != nil {
		return nil, fmt.Errorf("policy bundle: %w", err)
	}
	// Every component decides through one hot-reloadable, cached engine;
	// Run keeps it on the latest bundle published on policy.bundle.updates.
	engine := policy.NewReloadable(baseEngine, policy.ReloadableConfig{Registerer: a.reg})
	a.policy, a.receiptKeys = engine, receiptKeys
	stepActions, stepAge := engine.StepUp()
	stepUp := httpx.StepUp{Actions: stepActions, MaxAge: stepAge}
	if cfg.has("processor") {
		a.processor, err = commands.NewProcessor(commands.ProcessorConfig{
			Brokers: a.brokers, InstanceID: cfg.InstanceID, TransactionalID: transactionalID(cfg), Signer: signer, Policy: engine,
			Logger: a.log, Registerer: a.reg, SubjectKeys: subjectKeys, SelectiveAttrs: cfg.SelectiveAttrs,
			ValidatePrice: func(p commands.PricingSet) error {
				return cogs.ValidatePriceSet(priceRules, cogs.PriceSet{Meter: p.Meter, Unit: p.Unit, Region: p.Region, Currency: p.Currency,
					UnitPrice: p.UnitPrice, EffectiveFrom: p.EffectiveFrom, AppliesToTenant: p.AppliesToTenant})
			},
		})
		if err != nil {
			return nil, err
		}
	}
	if cfg.has("api") {
		a.waiter, err = commands.NewWaiter(tctx, a.brokers, a.log)
		if err != nil {
			return nil, err
		}
		a.index, err = commands.NewReceiptIndex(a.brokers, a.log)
		if err != nil {
			return nil, err
		}
		a.api, err = commands.NewAPI(commands.APIConfig{
			Producer: a.producer, Waiter: a.waiter, Index: a.index, Tokens: verifier,
			Keys: keyfile.KeySet{Keys: []keyfile.PublicKey{signer.Public()}}, Ready: a.ready.Load,
			RatePerTenant: cfg.RatePerTenant, Burst: cfg.Burst, MaxInFlight: cfg.MaxInFlight, Timeout: cfg.CommandTimeout,
			Metrics: httpMetrics, Registerer: a.reg, Logger: a.log, StepUp: stepUp,
		})
		if err != nil {
			return nil, err
		}
		a.projector, err = graph.NewProjector(graph.ProjectorConfig{Brokers: a.brokers, InstanceID: cfg.InstanceID,
			SnapshotDir: filepath.Join(cfg.DataDir, "snapshots"), SnapshotInterval: cfg.SnapshotInterval, Logger: a.log, Registerer: a.reg})
		if err != nil {
			return nil, err
		}
		graphAPI, err := graph.NewAPI(graph.APIConfig{Projector: a.projector, Tokens: verifier, Authorizer: engine,
			Metrics: httpMetrics, Registerer: a.reg, ConsistencyTimeout: cfg.ConsistencyTimeout})
		if err != nil {
			return nil, err
		}
		provenance, err := ledger.NewLedger(a.pg, checkpointSigner)
		if err != nil {
			return nil, err
		}
		ledgerAPI, err := ledger.NewAPI(ledger.APIConfig{Ledger: provenance, Tokens: verifier, Metrics: httpMetrics,
			Disclose: discloseAuthorizer(engine, stepUp), SubjectKeys: subjectKeys})
		if err != nil {
			return nil, err
		}
		// Metering has its own producer: large ingest batches must not fill
		// the buffer the command path waits on.
		meterProducer, err := kgo.NewClient(kgo.SeedBrokers(a.brokers...), kgo.RequiredAcks(kgo.AllISRAcks()),
			kgo.ProducerLinger(2*time.Millisecond))
		if err != nil {
			return nil, fmt.Errorf("kafka client: %w", err)
		}
		a.closers = append(a.closers, meterProducer.Close)
		meteringAPI, err := metering.NewAPI(metering.Config{Producer: meterProducer, Tokens: verifier, Metrics: httpMetrics,
			Registerer: a.reg, Ready: a.ready.Load, Logger: a.log})
		if err != nil {
			return nil, err
		}
		mux := http.NewServeMux()
		meteringAPI.Register(mux)
		a.api.Register(mux)
		graphAPI.Register(mux)
		ledgerAPI.Register(mux)
		mux.Handle("/", httpMetrics.Instrument("other", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			httpx.WriteProblem(w, httpx.NewProblem(http.StatusNotFound, "not-found", "no route for "+r.Method+" "+r.URL.Path))
		})))
		a.apiSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 15 * time.Second,
			WriteTimeout: 30 * time.Second, IdleTimeout: 120 * time.Second, MaxHeaderBytes: 64 << 10}
		if a.apiLn, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
			return nil, fmt.Errorf("--http-addr: %w", err)
		}
		a.closers = append(a.closers, func() { _ = a.apiLn.Close() })
	}

	mmux := http.NewServeMux() // routes: TelemetryRoutes
	mmux.Handle("GET /metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{Registry: a.reg}))
	mmux.HandleFunc("GET /healthz/live", func(w http.ResponseWriter, _ *http.Request) {
		httpx.WriteJSON(w, http.StatusOK, map[string]string{"status": "live"})
	})
	mmux.HandleFunc("GET /healthz/ready", a.readyz)
	if cfg.Pprof {
		mmux.HandleFunc("/debug/pprof/", pprof.Index)
		mmux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mmux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	a.metricsSrv = &http.Server{Handler: mmux, ReadHeaderTimeout: 5 * time.Second}
	if a.metricsLn, err = net.Listen("tcp", cfg.MetricsAddr); err != nil {
		return nil, fmt.Errorf("--metrics-addr: %w", err)
	}
	a.closers = append(a.closers, func() { _ = a.metricsLn.Close() })

	if cfg.Mode == ModeDev {
		if err := a.bootstrapAdmin(); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// transactionalID is stable in serve mode (fencing a restarted instance's
// previous incarnation) and fresh per start in dev mode, where the broker
// dies with the process and has no zombie to fence.
func transactionalID(cfg Config) string {
	if cfg.Mode == ModeDev {
		return "companyos-processor-" + cfg.InstanceID + "-" + commands.RandomID("")[:12]
	}
	return "companyos-processor-" + cfg.InstanceID
}

// loadKey loads an Ed25519 key file, creating it in dev mode.
func loadKey(cfg Config, path, flag string) (ed25519.PrivateKey, error) {
	if cfg.Mode == ModeDev {
		k, _, err := keyfile.LoadOrCreate(path)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", flag, err)
		}
		return k, nil
	}
	k, err := keyfile.Load(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", flag, err)
	}
	return k, nil
}

// Migrate creates the Postgres database when missing and applies the
// embedded migrations (`companyos migrate`).
func Migrate(ctx context.Context, pgDSN, chAddr, chDatabase string) error {
	pool, err := stores.EnsurePostgres(ctx, pgDSN)
	if err != nil {
		return fmt.Errorf("--pg-dsn: %w", err)
	}
	defer pool.Close()
	if err := ledger.Migrate(ctx, pool); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	if chAddr == "" {
		return nil
	}
	ch, err := stores.EnsureClickHouse(ctx, chAddr, chDatabase)
	if err != nil {
		return fmt.Errorf("--clickhouse-addr/--clickhouse-database: %w", err)
	}
	defer ch.Close()
	if err := cogs.Migrate(ctx, ch); err != nil {
		return fmt.Errorf("clickhouse: %w", err)
	}
	return nil
}

func loadSigningKey(cfg Config) (ed25519.PrivateKey, bool, error) {
	if cfg.Mode == ModeDev {
		k, created, err := keyfile.LoadOrCreate(cfg.SigningKeyFile)
		if err != nil {
			return nil, false, fmt.Errorf("--signing-key-file: %w", err)
		}
		return k, created, nil
	}
	k, err := keyfile.Load(cfg.SigningKeyFile)
	if err != nil {
		return nil, false, fmt.Errorf("--signing-key-file: %w", err)
	}
	return k, false, nil
}

// DevIssuerKeyFile is where dev mode keeps its token issuer key.
func DevIssuerKeyFile(dataDir string) string { return filepath.Join(dataDir, "token-issuer.key") }

func (a *App) tokenVerifier() (*auth.Verifier, error) {
	var ks keyfile.KeySet
	switch {
	case a.cfg.TokenKeysFile != "":
		var err error
		if ks, err = keyfile.ReadKeySet(a.cfg.TokenKeysFile); err != nil {
			return nil, fmt.Errorf("--token-keys-file: %w", err)
		}
	case a.cfg.Mode == ModeDev:
		k, _, err := keyfile.LoadOrCreate(DevIssuerKeyFile(a.cfg.DataDir))
		if err != nil {
			return nil, fmt.Errorf("token issuer key: %w", err)
		}
		a.TokenIssuer = auth.NewIssuer(a.cfg.TokenIssuer, k)
		ks = a.TokenIssuer.KeySet()
	}
	return auth.NewVerifier(auth.VerifierConfig{Keys: ks, Issuer: a.cfg.TokenIssuer})
}

// bootstrapAdmin writes DataDir/admin.token on first start (and when the old
// one no longer verifies) and prints it.
func (a *App) bootstrapAdmin() error {
	path := filepath.Join(a.cfg.DataDir, "admin.token")
	if raw, err := os.ReadFile(path); err == nil {
		tok := strings.TrimSpace(string(raw))
		v, verr := auth.NewVerifier(auth.VerifierConfig{Keys: a.TokenIssuer.KeySet(), Issuer: a.cfg.TokenIssuer})
		if verr == nil {
			if c, err := v.Verify(tok); err == nil && time.Until(c.ExpiresAt) > 24*time.Hour {
				a.AdminToken = tok
				a.log.Info("admin token", "file", path, "receipt_keyid", a.SigningKeyID)
				return nil
			}
		}
	}
	tok, err := a.TokenIssuer.Issue(auth.IssueRequest{Principal: "user:admin", Tenants: []string{"*"}, Roles: []string{"admin"}, MFA: true, TTL: auth.MaxTTL})
	if err != nil {
		return fmt.Errorf("bootstrap admin token: %w", err)
	}
	if err := os.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
		return fmt.Errorf("bootstrap admin token: %w", err)
	}
	a.AdminToken = tok
	fmt.Fprintf(os.Stderr, "\nBootstrap admin token (principal user:admin, all tenants, valid 30 days), saved to %s:\n\n  %s\n\nReceipt signing key id: %s\n\n", path, tok, a.SigningKeyID)
	return nil
}

func (a *App) openStores(ctx context.Context) error {
	sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	var err error
	if a.pg, err = stores.EnsurePostgres(sctx, a.cfg.PGDSN); err != nil {
		return fmt.Errorf("--pg-dsn: %w (is Postgres running? run deploy/local/up.sh)", err)
	}
	a.closers = append(a.closers, a.pg.Close)
	if a.ch, err = stores.EnsureClickHouse(sctx, a.cfg.ClickHouseAddr, a.cfg.ClickHouseDatabase); err != nil {
		return fmt.Errorf("--clickhouse-addr/--clickhouse-database: %w (is ClickHouse running? run deploy/local/up.sh)", err)
	}
	a.closers = append(a.closers, func() { _ = a.ch.Close() })
	return nil
}

func (a *App) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	checks := map[string]string{}
	ok := a.ready.Load()
	mark := func(name string, err error) {
		if err != nil {
			checks[name] = err.Error()
			ok = false
		} else {
			checks[name] = "ok"
		}
	}
	mark("kafka", a.producer.Ping(ctx))
	mark("postgres", a.pg.Ping(ctx))
	mark("clickhouse", a.ch.Ping(ctx))
	if a.processor != nil {
		var err error
		if !a.processor.Ready() {
			err = errors.New("not joined")
		}
		mark("processor", err)
	}
	if a.projector != nil {
		var err error
		if !a.projector.Ready() {
			err = errors.New("not consuming")
		}
		mark("graph_projector", err)
	}
	if a.cogsP != nil {
		var err error
		if !a.cogsP.Ready() {
			err = errors.New("not consuming")
		}
		mark("cogs_projector", err)
	}
	if a.ledgerP != nil {
		// Informational: a standby ledger instance (another one holds the
		// writer lock) is healthy, so this check never fails readiness.
		checks["ledger_projector"] = "standby"
		if a.ledgerP.Ready() {
			checks["ledger_projector"] = "ok"
		}
	}
	status := http.StatusOK
	if !ok {
		status = http.StatusServiceUnavailable
	}
	httpx.WriteJSON(w, status, map[string]any{"ready": ok, "checks": checks})
}

// TelemetryRoutes are the routes served on --metrics-addr.
var TelemetryRoutes = []string{"GET /metrics", "GET /healthz/live", "GET /healthz/ready"}

// Brokers are the Kafka seed brokers in use.
func (a *App) Brokers() []string { return a.brokers }

// HTTPAddr is the API's bound address (useful with port 0).
func (a *App) HTTPAddr() string { return a.apiLn.Addr().String() }

// MetricsAddr is the telemetry listener's bound address.
func (a *App) MetricsAddr() string { return a.metricsLn.Addr().String() }

// Run serves until ctx is done, then shuts down in reverse order: stop
// taking requests and drain in-flight commands (the processor keeps running
// so they get their decisions), then stop the workers, then Kafka.
func (a *App) Run(ctx context.Context) error {
	defer a.close()
	workers, stopWorkers := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWorkers()
	g, gctx := errgroup.WithContext(workers)
	// Catch up with published policy bundles before deciding anything.
	bundles := make(chan struct{})
	var once sync.Once
	g.Go(func() error {
		return commands.FollowBundles(gctx, a.brokers, a.receiptKeys, a.policy, a.log, func() { once.Do(func() { close(bundles) }) })
	})
	select {
	case <-bundles:
	case <-gctx.Done():
	case <-ctx.Done():
	}
	if a.processor != nil {
		g.Go(func() error { return a.processor.Run(gctx) })
	}
	if a.ledgerP != nil {
		g.Go(func() error { return a.ledgerP.Run(gctx) })
	}
	if a.cogsP != nil {
		g.Go(func() error { return a.cogsP.Run(gctx) })
	}
	if a.waiter != nil {
		g.Go(func() error { return a.waiter.Run(gctx) })
		g.Go(func() error { return a.index.Run(gctx) })
		g.Go(func() error { return a.projector.Run(gctx) })
	}
	serve := func(srv *http.Server, ln net.Listener) {
		g.Go(func() error {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	serve(a.metricsSrv, a.metricsLn)
	if a.apiSrv != nil {
		serve(a.apiSrv, a.apiLn)
	}
	a.ready.Store(true)
	a.log.Info("companyos running", "mode", a.cfg.Mode, "http", a.addrOr(a.apiLn), "metrics", a.MetricsAddr(), "kafka", a.brokers, "roles", a.cfg.Roles)

	select {
	case <-ctx.Done():
	case <-gctx.Done(): // a worker failed
	}
	a.ready.Store(false)
	a.log.Info("shutting down", "grace", a.cfg.ShutdownGrace)
	sctx, cancel := context.WithTimeout(context.Background(), a.cfg.ShutdownGrace)
	defer cancel()
	if a.apiSrv != nil {
		_ = a.apiSrv.Shutdown(sctx) // waits for handlers, i.e. in-flight commands
		_ = a.api.Drain(sctx)
	}
	_ = a.metricsSrv.Shutdown(sctx)
	stopWorkers()
	err := g.Wait()
	if err != nil {
		a.log.Error("stopped with error", "err", err)
	} else {
		a.log.Info("stopped")
	}
	return err
}

func (a *App) addrOr(ln net.Listener) string {
	if ln == nil {
		return "-"
	}
	return ln.Addr().String()
}

func (a *App) close() {
	for i := len(a.closers) - 1; i >= 0; i-- {
		a.closers[i]()
	}
	a.closers = nil
}
