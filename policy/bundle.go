package policy

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"slices"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/storage"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/tester"
	"github.com/open-policy-agent/opa/v1/util"
)

// Bundle layout. Everything else in the bundle is hashed but not interpreted.
const (
	versionFile = "VERSION"   // semantic version, e.g. "0.1.0"
	dataFile    = "data.json" // mounted at data.<dir path>, like an OPA bundle
	regoExt     = ".rego"
	testSuffix  = "_test.rego" // run at load time, never evaluated by Decide
)

// semverRE is the official SemVer 2.0.0 regular expression.
var semverRE = regexp.MustCompile(`^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)` +
	`(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?` +
	`(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$`)

// loadedBundle is a parsed bundle, before compilation.
type loadedBundle struct {
	modules map[string]*ast.Module // policy modules, evaluated by Decide
	tests   map[string]*ast.Module // *_test.rego modules, only run at load
	data    map[string]any
	version string // from VERSION
	hash    string // "sha256:<64 hex>"
}

// loadBundle reads every file of fsys. Like go:embed, it skips files and
// directories whose names start with "." or "_", so a bundle hashes the same
// whether it is read from disk (os.DirFS) or from the embedded copy.
func loadBundle(fsys fs.FS) (*loadedBundle, error) {
	b := &loadedBundle{
		modules: map[string]*ast.Module{},
		tests:   map[string]*ast.Module{},
		data:    map[string]any{},
	}
	files := map[string][]byte{}
	var errs []error
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != "." && (strings.HasPrefix(d.Name(), ".") || strings.HasPrefix(d.Name(), "_")) {
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			if p == ScenarioDir {
				// The scenario matrix tests the bundle; it is not part of
				// it (nor of its hash: editing a scenario is not a policy
				// change).
				return fs.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() {
			errs = append(errs, fmt.Errorf("%s: not a regular file", p))
			return nil
		}
		content, err := fs.ReadFile(fsys, p)
		if err != nil {
			return err
		}
		files[p] = content
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read bundle: %w", err)
	}

	paths := make([]string, 0, len(files))
	for p := range files {
		paths = append(paths, p)
	}
	slices.Sort(paths)

	for _, p := range paths {
		content := files[p]
		switch {
		case p == versionFile:
			v := strings.TrimSpace(string(content))
			switch {
			case !semverRE.MatchString(v):
				errs = append(errs, fmt.Errorf("%s: %q is not a semantic version", p, v))
			case strings.Contains(v, "+"):
				// Engine.Version appends "+sha256:..." itself.
				errs = append(errs, fmt.Errorf("%s: %q must not carry build metadata", p, v))
			}
			b.version = v
		case path.Base(p) == dataFile:
			if err := mountData(b.data, path.Dir(p), content); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", p, err))
			}
		case strings.HasSuffix(p, regoExt):
			m, err := ast.ParseModuleWithOpts(p, string(content), ast.ParserOptions{RegoVersion: ast.RegoV1})
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if strings.HasSuffix(p, testSuffix) {
				b.tests[p] = m
			} else {
				b.modules[p] = m
			}
		}
	}
	if !slices.Contains(paths, versionFile) {
		errs = append(errs, fmt.Errorf("%s: missing", versionFile))
	}
	if len(b.modules) == 0 {
		errs = append(errs, fmt.Errorf("no policy modules (*%s other than *%s)", regoExt, testSuffix))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	b.hash = hashFiles(paths, files)
	return b, nil
}

// hashFiles is the bundle content hash: SHA-256 over, for each file in
// sorted path order, the path, a NUL byte, the content length as a big-endian
// uint64, and the content. The length prefix keeps the encoding unambiguous
// even when content contains NUL bytes.
func hashFiles(sortedPaths []string, files map[string][]byte) string {
	h := sha256.New()
	var n [8]byte
	for _, p := range sortedPaths {
		h.Write([]byte(p))
		h.Write([]byte{0})
		binary.BigEndian.PutUint64(n[:], uint64(len(files[p])))
		h.Write(n[:])
		h.Write(files[p])
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// mountData merges a data.json document into root at dir ("." is the root),
// the way OPA bundles do. Overlapping keys are an error.
func mountData(root map[string]any, dir string, content []byte) error {
	var doc any
	if err := util.UnmarshalJSON(content, &doc); err != nil { // numbers stay json.Number
		return fmt.Errorf("invalid JSON: %w", err)
	}
	obj, ok := doc.(map[string]any)
	if !ok {
		return errors.New("must be a JSON object")
	}
	node := root
	if dir != "." {
		for seg := range strings.SplitSeq(dir, "/") {
			next, ok := node[seg]
			if !ok {
				child := map[string]any{}
				node[seg] = child
				node = child
				continue
			}
			if node, ok = next.(map[string]any); !ok {
				return fmt.Errorf("data path %q collides with a non-object value", dir)
			}
		}
	}
	for k, v := range obj {
		if _, dup := node[k]; dup {
			return fmt.Errorf("key %q is defined twice", k)
		}
		node[k] = v
	}
	return nil
}

// capabilities are the built-ins a bundle may use: all of this OPA
// version's, minus the non-deterministic ones (http.send, time.now_ns,
// rand.intn, ...). Decisions are stamped into signed receipts and must be
// reproducible on replay from the log, so a policy may depend only on its
// input and its bundle. Anything time- or network-dependent belongs in the
// input, resolved by the caller.
func capabilities() *ast.Capabilities {
	c := ast.CapabilitiesForThisVersion()
	c.Builtins = slices.DeleteFunc(c.Builtins, func(b *ast.Builtin) bool { return b.Nondeterministic })
	c.AllowNet = []string{}
	return c
}

func newCompiler() *ast.Compiler {
	return ast.NewCompiler().
		WithCapabilities(capabilities()).
		WithDefaultRegoVersion(ast.RegoV1)
}

// compileBundle compiles the policy modules (without tests) for evaluation.
func compileBundle(b *loadedBundle) (*ast.Compiler, error) {
	c := newCompiler()
	c.Compile(b.modules)
	if c.Failed() {
		return nil, fmt.Errorf("compile: %w", c.Errors)
	}
	return c, nil
}

// runBundleTests runs every test_* rule of the bundle (policy and test
// modules together, as `opa test` would) and returns an error naming each
// failing test.
func runBundleTests(ctx context.Context, b *loadedBundle, store storage.Store) error {
	if len(b.tests) == 0 {
		return nil
	}
	all := make(map[string]*ast.Module, len(b.modules)+len(b.tests))
	for k, m := range b.modules {
		all[k] = m.Copy()
	}
	for k, m := range b.tests {
		all[k] = m.Copy()
	}
	ch, err := tester.NewRunner().
		SetCompiler(newCompiler()).
		SetStore(store).
		SetModules(all).
		CapturePrintOutput(true).
		RaiseBuiltinErrors(true).
		RunTests(ctx, nil)
	if err != nil {
		return fmt.Errorf("compile tests: %w", err)
	}
	var passed int
	var failures []string
	for r := range ch {
		switch {
		case r.Pass():
			passed++
		case r.Skip:
		default:
			failures = append(failures, describeFailure(r))
		}
	}
	if len(failures) > 0 {
		slices.Sort(failures)
		return fmt.Errorf("%d of %d policy tests failed:\n  %s",
			len(failures), passed+len(failures), strings.Join(failures, "\n  "))
	}
	return nil
}

func describeFailure(r *tester.Result) string {
	var sb strings.Builder
	sb.WriteString(r.Package)
	sb.WriteByte('.')
	sb.WriteString(r.Name)
	if r.Location != nil {
		fmt.Fprintf(&sb, " (%s:%d)", r.Location.File, r.Location.Row)
	}
	switch {
	case r.Error != nil:
		fmt.Fprintf(&sb, ": error: %v", r.Error)
	case r.FailedAt != nil:
		fmt.Fprintf(&sb, ": FAIL at %s", r.FailedAt.String())
		if r.FailedAt.Location != nil {
			fmt.Fprintf(&sb, " (line %d)", r.FailedAt.Location.Row)
		}
	default:
		sb.WriteString(": FAIL")
	}
	return sb.String()
}

// newStore holds the bundle data. Reads return AST values directly, which
// saves a conversion on every evaluation.
func newStore(data map[string]any) storage.Store {
	return inmem.NewFromObjectWithOpts(data,
		inmem.OptRoundTripOnWrite(false),
		inmem.OptReturnASTValuesOnRead(true))
}

// ScenarioDir is the bundle-relative directory of the scenario matrix
// (`companyos policy test`), skipped when loading the bundle.
const ScenarioDir = "scenarios"
