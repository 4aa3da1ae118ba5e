// Package policy owns authorization decisions: it loads an OPA policy bundle
// (Rego + data + VERSION), refuses it unless it compiles and its own Rego
// tests pass, and answers Decide for every command. Deny is the default:
// an undefined result, an evaluation error, a timeout or a malformed
// decision all deny, with a "fail_closed" reason saying what happened.
//
// A Decision carries the bundle's version and content hash so that it can be
// stamped into a signed receipt. This package does not know about receipts,
// Kafka or HTTP, and it does not load attributes itself: the caller resolves
// principal and resource attributes into an Input.
package policy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/metrics"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/topdown"

	"github.com/companyos/companyos/schemas"
)

// DecisionQuery is the rule every bundle must define. Its value must be an
// object {"allow": bool, "reasons": [...] or set, "obligations": optional}.
const DecisionQuery = "data.companyos.authz.decision"

// DefaultTimeout bounds one evaluation when Config.Timeout is zero.
const DefaultTimeout = 50 * time.Millisecond

// FailClosedRule is the Reason.Rule of a deny that the policy itself did not
// produce: undefined result, evaluation error, timeout or malformed output.
const FailClosedRule = "fail_closed"

// ErrInvalidBundle is wrapped by New when the bundle cannot be read, does not
// compile, or its tests fail.
var ErrInvalidBundle = errors.New("policy: invalid bundle")

// Input is what a decision sees. JSON tags are the Rego input document.
type Input struct {
	Action    string    `json:"action"` // e.g. "entity.create"
	Tenant    string    `json:"tenant"`
	Principal Principal `json:"principal"`
	Resource  Resource  `json:"resource"`           // the entity acted on (for relations: the "from" entity)
	Target    *Resource `json:"target,omitempty"`   // for relation.*: the "to" entity
	Relation  string    `json:"relation,omitempty"` // for relation.*: the relation type
	// Context carries per-action facts resolved by the caller: "approvals"
	// (valid approvals for this request), "approval" (what an
	// approval.grant approves), "justification". Optional.
	Context map[string]any `json:"context,omitempty"`
}

// Principal is who asks. A nil Roles or Attrs reaches Rego as [] or {}.
type Principal struct {
	ID    string         `json:"id"` // "user:alice"
	Kind  string         `json:"kind,omitempty"`
	Roles []string       `json:"roles"` // union of token-asserted roles and the entity's "roles" attribute
	Attrs map[string]any `json:"attrs"` // entity attributes (region, ...), may be empty
	MFA   bool           `json:"mfa"`   // the request was authenticated with MFA
	// MFAAgeSeconds is how long ago the MFA login happened; -1 when the
	// token has no MFA or no auth_time (step-up then always applies).
	MFAAgeSeconds int64 `json:"mfa_age_seconds"`
	Exists        bool  `json:"exists"` // principal exists as an entity in the tenant
}

// Resource is an entity acted on. A nil Attrs reaches Rego as {}.
type Resource struct {
	ID     string         `json:"id"`
	Kind   string         `json:"kind,omitempty"`
	Attrs  map[string]any `json:"attrs"`
	Exists bool           `json:"exists"`
}

// Reason explains one rule's part in a decision: on allow, a rule that
// granted it (Result true); on deny, why a candidate rule did not apply.
type Reason struct {
	Rule       string         `json:"rule"`
	Result     bool           `json:"result"`
	Message    string         `json:"message,omitempty"`
	Attributes map[string]any `json:"attributes,omitempty"`
}

// Obligation is something the caller must do for an allow to stand.
type Obligation struct {
	Type   string         `json:"type"` // e.g. "mfa_required" (none produced yet; typed for later)
	Params map[string]any `json:"params,omitempty"`
}

// Decision is the outcome of one evaluation. Rationale is sorted by rule,
// then message, and Obligations is never nil, so that a Decision marshals
// to the same bytes every time (it is signed into receipts).
type Decision struct {
	Allow         bool         `json:"allow"`
	Rationale     []Reason     `json:"rationale"`
	Obligations   []Obligation `json:"obligations"`
	PolicyVersion string       `json:"policy_version"`
}

// Config configures an Engine.
type Config struct {
	// Bundle is required: the bundle root, holding *.rego (files ending in
	// _test.rego are run at load and never evaluated), data.json files
	// (mounted at their directory, as in OPA bundles) and VERSION (a
	// semantic version). Names starting with "." or "_" are ignored.
	Bundle fs.FS
	// Timeout is optional, default DefaultTimeout (50ms): the deadline of
	// one evaluation; exceeding it denies.
	Timeout time.Duration
}

// Validate reports every problem with the configuration.
func (c Config) Validate() error {
	var errs []error
	if c.Bundle == nil {
		errs = append(errs, errors.New("policy: Bundle is required"))
	}
	if c.Timeout < 0 {
		errs = append(errs, fmt.Errorf("policy: Timeout must not be negative, got %s", c.Timeout))
	}
	return errors.Join(errs...)
}

// Engine evaluates one compiled bundle. It is safe for concurrent use.
//
// Built-in errors (e.g. to_number("x")) are evaluation errors, not undefined
// values, both in Decide and in the bundle's tests: a policy cannot silently
// skip a check because a built-in failed.
type Engine struct {
	query   rego.PreparedEvalQuery
	timeout time.Duration
	version string // "<semver>+sha256:<12 hex>"
	hash    string // "sha256:<64 hex>"
	// inputPaths are the input paths the policy reads (see DecisionKey).
	inputPaths [][]string
	// data is the bundle's data document (read-only).
	data map[string]any
}

// New loads, tests and compiles the bundle once. It returns an error
// wrapping ErrInvalidBundle if the bundle cannot be parsed or compiled, or
// if any of its Rego tests fail (each failure is listed).
func New(ctx context.Context, cfg Config) (*Engine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	b, err := loadBundle(cfg.Bundle)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidBundle, err)
	}
	compiler, err := compileBundle(b)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidBundle, err)
	}
	store := newStore(b.data)
	if err := runBundleTests(ctx, b, store); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidBundle, err)
	}
	pq, err := rego.New(
		rego.Query(DecisionQuery),
		rego.Compiler(compiler),
		rego.Store(store),
		rego.StrictBuiltinErrors(true),
	).PrepareForEval(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: prepare %s: %w", ErrInvalidBundle, DecisionQuery, err)
	}
	return &Engine{
		query:      pq,
		timeout:    cfg.Timeout,
		version:    b.version + "+" + b.hash[:len("sha256:")+12],
		hash:       b.hash,
		inputPaths: inputPaths(compiler),
		data:       b.data,
	}, nil
}

// Default is New with the bundle embedded in schemas/policy.
func Default(ctx context.Context) (*Engine, error) {
	bundle, err := fs.Sub(schemas.Policy, "policy")
	if err != nil {
		return nil, fmt.Errorf("policy: embedded bundle: %w", err)
	}
	return New(ctx, Config{Bundle: bundle})
}

// StepUp returns the bundle's step-up rule (data.companyos.step_up): the
// actions that need a fresh MFA login and its maximum age.
func (e *Engine) StepUp() (actions []string, maxAge time.Duration) {
	c, _ := e.data["companyos"].(map[string]any)
	su, _ := c["step_up"].(map[string]any)
	list, _ := su["actions"].([]any)
	for _, a := range list {
		if s, ok := a.(string); ok {
			actions = append(actions, s)
		}
	}
	switch v := su["max_age_seconds"].(type) {
	case json.Number:
		n, _ := v.Int64()
		maxAge = time.Duration(n) * time.Second
	case float64:
		maxAge = time.Duration(v) * time.Second
	}
	return actions, maxAge
}

// Version is "<semver>+sha256:<first 12 hex of Hash>", e.g.
// "0.1.0+sha256:ab12cd34ef56". Every Decision carries it.
func (e *Engine) Version() string { return e.version }

// Hash is "sha256:<64 hex>" over the bundle's files: for each file in sorted
// path order, path, NUL, content length (uint64 big-endian), content.
func (e *Engine) Hash() string { return e.hash }

// Decide evaluates DecisionQuery for in. It never fails: anything other
// than a well-formed decision from the policy denies, with a single
// fail_closed reason describing what happened. An evaluation that outlives
// the timeout or ctx denies even if it produced a result.
func (e *Engine) Decide(ctx context.Context, in Input) (d Decision) {
	defer func() {
		if r := recover(); r != nil {
			d = e.failClosed(fmt.Sprintf("evaluation panicked: %v", r))
		}
	}()
	if err := ctx.Err(); err != nil {
		return e.failClosed("evaluation cancelled: " + err.Error())
	}
	input, err := inputValue(&in)
	if err != nil {
		return e.failClosed("invalid input: " + err.Error())
	}

	// Cancellation without context.WithTimeout: OPA would otherwise start a
	// goroutine per evaluation to watch ctx. A timer and an AfterFunc on the
	// caller's ctx flip the same atomic flag the evaluator polls.
	start := time.Now()
	cancel := topdown.NewCancel()
	timer := time.AfterFunc(e.timeout, cancel.Cancel)
	defer timer.Stop()
	if ctx.Done() != nil {
		stop := context.AfterFunc(ctx, cancel.Cancel)
		defer stop()
	}

	rs, err := e.query.Eval(ctx,
		rego.EvalParsedInput(input),
		rego.EvalExternalCancel(cancel),
		rego.EvalMetrics(noMetrics),
		rego.EvalGenerateJSON(keepAST),
	)
	// The evaluator polls the flag, so a fast evaluation can finish after
	// its deadline; checking the clock makes "too late = deny" exact.
	switch {
	case ctx.Err() != nil:
		return e.failClosed("evaluation cancelled: " + ctx.Err().Error())
	case time.Since(start) > e.timeout:
		return e.failClosed(fmt.Sprintf("evaluation deadline exceeded (timeout %s)", e.timeout))
	case err != nil:
		return e.failClosed("evaluation error: " + err.Error())
	case len(rs) == 0 || len(rs[0].Expressions) == 0:
		return e.failClosed(DecisionQuery + " is undefined")
	case len(rs) > 1:
		return e.failClosed(fmt.Sprintf("%s produced %d results, want 1", DecisionQuery, len(rs)))
	}
	result, ok := rs[0].Expressions[0].Value.(*ast.Term)
	if !ok {
		return e.failClosed(fmt.Sprintf("unexpected result type %T", rs[0].Expressions[0].Value))
	}
	d, err = parseDecision(result.Value)
	if err != nil {
		return e.failClosed("malformed decision: " + err.Error())
	}
	d.PolicyVersion = e.version
	return d
}

// keepAST makes Eval return results as *ast.Term, so parseDecision reads
// the AST instead of a map[string]any copy of it.
func keepAST(t *ast.Term, _ *rego.EvalContext) (any, error) { return t, nil }

// noMetrics: per-evaluation OPA metrics would allocate and nobody reads them.
var noMetrics = metrics.NoOp()

func (e *Engine) failClosed(msg string) Decision {
	return Decision{
		Allow:         false,
		Rationale:     []Reason{{Rule: FailClosedRule, Result: false, Message: msg}},
		Obligations:   []Obligation{},
		PolicyVersion: e.version,
	}
}
