package policy

// Policy documentation: a static HTML site rendered from a bundle, so the
// people who review policy read what the engine evaluates, not a wiki page
// that drifted from it.

import (
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
	"go.yaml.in/yaml/v3"
)

// AttributesFile is the optional attribute catalog at the bundle root: a
// mapping of sections (principal, resource, ...) to lists of
// {name, type, source, description} entries.
const AttributesFile = "attributes.yaml"

//go:embed templates/*.html
var docTemplates embed.FS

// DocsConfig configures RenderDocs.
type DocsConfig struct {
	// Bundle is required: the bundle root, as for Config.Bundle.
	Bundle fs.FS
	// Scenarios is optional: the scenario matrix, rendered as a table.
	Scenarios []Scenario
}

// RenderDocs renders the documentation site of a bundle and returns its
// files by slash-separated name ("index.html", "rule-admin_all.html", ...).
// The output is a function of the bundle and scenarios only (no dates), so
// re-rendering an unchanged bundle gives identical bytes. Pages are
// self-contained: inline CSS, no scripts, no external assets.
//
// Rules are documented from three sources, merged by rule name: the
// `# --- Rule: <name> ---` comment block that introduces a section,
// METADATA annotations on rules, and the rationale objects
// ({"rule": "<name>", ...}) the rules produce, which give each rule's
// grant and deny clauses with their Rego source.
func RenderDocs(ctx context.Context, cfg DocsConfig) (map[string][]byte, error) {
	if cfg.Bundle == nil {
		return nil, errors.New("policy: docs: Bundle is required")
	}
	e, err := New(ctx, Config{Bundle: cfg.Bundle, Timeout: ToolTimeout})
	if err != nil {
		return nil, err
	}
	b, err := loadBundle(cfg.Bundle)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidBundle, err)
	}
	site := &siteDoc{Version: e.Version(), Hash: e.Hash()}
	if site.Catalog, err = catalogFromData(b.data); err != nil {
		return nil, err
	}
	if site.DataJSON, err = prettyJSON(b.data); err != nil {
		return nil, fmt.Errorf("policy: docs: data: %w", err)
	}
	if err := site.readRego(cfg.Bundle); err != nil {
		return nil, err
	}
	if site.Attributes, err = readAttributes(cfg.Bundle); err != nil {
		return nil, err
	}
	for _, s := range cfg.Scenarios {
		site.Scenarios = append(site.Scenarios, scenarioRow(s))
	}
	return site.render()
}

// WriteDocs writes the files of RenderDocs under dir, creating it. Files
// already in dir that RenderDocs did not produce are left alone.
func WriteDocs(dir string, files map[string][]byte) error {
	for _, name := range slices.Sorted(maps.Keys(files)) {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("policy: write docs: %w", err)
		}
		if err := os.WriteFile(p, files[name], 0o644); err != nil {
			return fmt.Errorf("policy: write docs: %w", err)
		}
	}
	return nil
}

type siteDoc struct {
	Version, Hash string
	Title         string
	Description   string
	Modules       []moduleDoc
	Rules         []*ruleDoc
	Tests         []testDoc
	Catalog       Catalog
	DataJSON      string
	Attributes    []attributeSection // nil when the bundle has no AttributesFile
	Scenarios     []scenarioDoc
}

type moduleDoc struct {
	File, Package, Title, Description string
	Page                              string
	Lines                             []sourceLine
}

type sourceLine struct {
	N    int
	Text string
}

type ruleDoc struct {
	Name, Page  string
	Kind        string // "Rule" or "Obligation" from the section header; "" otherwise
	Title       string
	Description string // from the comment block, then annotations
	File        string
	Line        int
	SourcePage  string
	Grants      []clauseDoc // clauses producing {"rule": Name, "result": true}
	Denials     []clauseDoc // clauses producing {"rule": Name, "result": false}
	Obligations []clauseDoc // clauses producing {"type": ...} obligations, in the rule's section
	Other       []clauseDoc // supporting rules in the rule's section, or the annotated rule itself
	Annotations []annotationDoc
	Section     string // the Rego of the comment section, when no clause names the rule
}

type clauseDoc struct {
	Head    string // e.g. "grants contains"
	Message string // the message expression (a literal or a sprintf call)
	Line    int
	Source  string
}

type annotationDoc struct {
	Scope, Title, Description string
	Line                      string
	Authors                   []string
	Related                   []string
	Custom                    string // JSON, empty when none
}

type testDoc struct {
	File, Name, SourcePage string
	Line                   int
}

type attributeSection struct {
	Name  string
	Attrs []attributeDoc
}

type attributeDoc struct {
	Name, Type, Source, Description string
	Other                           string // remaining keys as JSON
}

type scenarioDoc struct {
	Name, File, Description string
	Action                  string
	Principal, Resource     string
	Allow                   bool
	Obligations             string
}

var ruleHeaderRE = regexp.MustCompile(`^\s*-{2,}\s*(Rule|Obligation):\s*([A-Za-z0-9_.:-]+)\s*-*\s*$`)

var sectionHeaderRE = regexp.MustCompile(`^\s*-{3,}`)

// readRego parses the bundle's Rego with annotations and builds the module,
// rule and test documentation.
func (s *siteDoc) readRego(bundle fs.FS) error {
	var paths []string
	err := fs.WalkDir(bundle, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != "." && (strings.HasPrefix(d.Name(), ".") || strings.HasPrefix(d.Name(), "_")) {
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		if !d.IsDir() && strings.HasSuffix(p, regoExt) {
			paths = append(paths, p)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("policy: docs: %w", err)
	}
	slices.Sort(paths)
	rules := map[string]*ruleDoc{}
	get := func(name, file string, line int) *ruleDoc {
		r, ok := rules[name]
		if !ok {
			r = &ruleDoc{Name: name, File: file, Line: line}
			rules[name] = r
		}
		if line < r.Line && file == r.File {
			r.Line = line
		}
		return r
	}
	pages := map[string]bool{}
	for _, p := range paths {
		src, err := fs.ReadFile(bundle, p)
		if err != nil {
			return fmt.Errorf("policy: docs: %w", err)
		}
		m, err := ast.ParseModuleWithOpts(p, string(src), ast.ParserOptions{RegoVersion: ast.RegoV1, ProcessAnnotation: true})
		if err != nil {
			return fmt.Errorf("%w: %w", ErrInvalidBundle, err)
		}
		lines := strings.Split(strings.TrimSuffix(string(src), "\n"), "\n")
		md := moduleDoc{File: p, Package: strings.TrimPrefix(m.Package.Path.String(), "data."), Page: uniquePage(pages, "source-"+p)}
		for i, l := range lines {
			md.Lines = append(md.Lines, sourceLine{N: i + 1, Text: l})
		}
		for _, a := range m.Annotations {
			if a.Scope == "package" || a.Scope == "subpackages" {
				md.Title, md.Description = a.Title, a.Description
			}
		}
		s.Modules = append(s.Modules, md)

		if strings.HasSuffix(p, testSuffix) {
			for _, r := range m.Rules {
				name := r.Head.Ref().String()
				if strings.HasPrefix(name, "test_") || strings.HasPrefix(name, "todo_test_") {
					s.Tests = append(s.Tests, testDoc{File: p, Name: name, Line: r.Location.Row, SourcePage: md.Page})
				}
			}
			continue
		}
		if s.Title == "" && md.Title != "" {
			s.Title, s.Description = md.Title, md.Description
		}

		// Comment sections: "# --- Rule: name ---" (or "Obligation:") and
		// the comment lines right after it. A section runs to the next
		// "# ---" header.
		type section struct {
			rule       *ruleDoc
			start, end int // rows, inclusive
		}
		var sections []section
		for i, c := range m.Comments {
			match := ruleHeaderRE.FindStringSubmatch(string(c.Text))
			if match == nil {
				continue
			}
			r := get(match[2], p, c.Location.Row)
			r.Kind = match[1]
			var desc []string
			row := c.Location.Row
			for _, next := range m.Comments[i+1:] {
				if next.Location.Row != row+1 || sectionHeaderRE.Match(next.Text) {
					break
				}
				desc = append(desc, strings.TrimPrefix(string(next.Text), " "))
				row++
			}
			r.Description = joinParagraphs(r.Description, strings.Join(desc, "\n"))
			end := len(lines)
			for _, next := range m.Comments[i+1:] {
				if sectionHeaderRE.Match(next.Text) {
					end = next.Location.Row - 1
					break
				}
			}
			r.Section = strings.Trim(strings.Join(lines[min(c.Location.Row, end):end], "\n"), "\n")
			sections = append(sections, section{rule: r, start: c.Location.Row, end: end})
		}
		inSection := func(row int) *ruleDoc {
			for _, sec := range sections {
				if row >= sec.start && row <= sec.end {
					return sec.rule
				}
			}
			return nil
		}

		for _, rule := range m.Rules {
			text := ruleSource(lines, rule)
			name, clause, result, named := rationaleClause(rule, text)
			for _, a := range rule.Annotations {
				if custom, ok := a.Custom["rule"].(string); ok && custom != "" {
					name, named = custom, true
				}
			}
			var r *ruleDoc
			switch {
			case named:
				r = get(name, p, rule.Location.Row)
			case len(rule.Annotations) > 0:
				r = get(rule.Head.Ref().String(), p, rule.Location.Row)
			default:
				r = inSection(rule.Location.Row)
			}
			if r == nil {
				continue
			}
			switch {
			case isObligation(rule):
				r.Obligations = append(r.Obligations, clause)
			case !isRationale(rule):
				r.Other = append(r.Other, clause)
			case result == "true":
				r.Grants = append(r.Grants, clause)
			case result == "false":
				r.Denials = append(r.Denials, clause)
			default:
				r.Other = append(r.Other, clause)
			}
			for _, a := range rule.Annotations {
				ad := annotationDoc{Scope: a.Scope, Title: a.Title, Description: a.Description}
				if a.Location != nil {
					ad.Line = fmt.Sprint(a.Location.Row)
				}
				for _, au := range a.Authors {
					ad.Authors = append(ad.Authors, strings.TrimSpace(au.Name+" "+au.Email))
				}
				for _, rr := range a.RelatedResources {
					ad.Related = append(ad.Related, rr.Ref.String())
				}
				if len(a.Custom) > 0 {
					ad.Custom, _ = prettyJSON(a.Custom)
				}
				r.Annotations = append(r.Annotations, ad)
				if r.Title == "" {
					r.Title = a.Title
				}
				r.Description = joinParagraphs(r.Description, a.Description)
			}
		}
	}
	s.Rules = slices.Collect(maps.Values(rules))
	slices.SortFunc(s.Rules, func(a, b *ruleDoc) int {
		if a.File != b.File {
			return strings.Compare(a.File, b.File)
		}
		if a.Line != b.Line {
			return a.Line - b.Line
		}
		return strings.Compare(a.Name, b.Name)
	})
	for _, r := range s.Rules {
		r.Page = uniquePage(pages, "rule-"+r.Name)
		for _, md := range s.Modules {
			if md.File == r.File {
				r.SourcePage = md.Page
			}
		}
		if len(r.Grants)+len(r.Denials)+len(r.Obligations)+len(r.Other) > 0 {
			r.Section = ""
		}
	}
	return nil
}

// rationaleClause reads the object a rule produces (`grants contains {...}`,
// or a rule whose value is such an object) and returns its "rule" name, the
// clause, and "true"/"false"/"" for its "result".
func rationaleClause(rule *ast.Rule, source string) (name string, c clauseDoc, result string, ok bool) {
	head := rule.Head.Ref().String()
	if rule.Head.Key != nil {
		head += " contains"
	}
	c = clauseDoc{Head: head, Line: rule.Location.Row, Source: source}
	term := rule.Head.Key
	if term == nil {
		term = rule.Head.Value
	}
	if term == nil {
		return "", c, "", false
	}
	obj, isObj := term.Value.(ast.Object)
	if !isObj {
		return "", c, "", false
	}
	n, isStr := valueOf(obj, "rule").(ast.String)
	if !isStr {
		return "", c, "", false
	}
	if msg := obj.Get(ast.StringTerm("message")); msg != nil {
		if s, isStr := msg.Value.(ast.String); isStr {
			c.Message = string(s)
		} else {
			c.Message = msg.String()
		}
	}
	if b, isBool := valueOf(obj, "result").(ast.Boolean); isBool {
		result = fmt.Sprint(bool(b))
	}
	return string(n), c, result, true
}

// isRationale: the rule produces a reason object ({"rule": ...}).
func isRationale(rule *ast.Rule) bool { return producesObjectWith(rule, "rule") }

// isObligation: the rule produces an obligation object ({"type": ...}).
func isObligation(rule *ast.Rule) bool {
	return !isRationale(rule) && producesObjectWith(rule, "type")
}

func producesObjectWith(rule *ast.Rule, key string) bool {
	term := rule.Head.Key
	if term == nil {
		term = rule.Head.Value
	}
	if term == nil {
		return false
	}
	obj, ok := term.Value.(ast.Object)
	return ok && obj.Get(ast.StringTerm(key)) != nil
}

func valueOf(obj ast.Object, key string) ast.Value {
	if t := obj.Get(ast.StringTerm(key)); t != nil {
		return t.Value
	}
	return nil
}

// ruleSource is the source lines of a rule. A rule's Location.Text spans
// the whole rule except for default rules, whose Text is just "default".
func ruleSource(lines []string, rule *ast.Rule) string {
	start := rule.Location.Row - 1
	end := start + bytes.Count(rule.Location.Text, []byte("\n")) + 1
	if start < 0 || end > len(lines) {
		return string(rule.Location.Text)
	}
	return strings.Join(lines[start:end], "\n")
}

func joinParagraphs(a, b string) string {
	a, b = strings.TrimSpace(a), strings.TrimSpace(b)
	switch {
	case a == "":
		return b
	case b == "" || strings.Contains(a, b):
		return a
	default:
		return a + "\n\n" + b
	}
}

var pageUnsafeRE = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// uniquePage makes a file name for a page from a name, unique within used.
func uniquePage(used map[string]bool, name string) string {
	base := pageUnsafeRE.ReplaceAllString(name, "_")
	page := base + ".html"
	for i := 2; used[page]; i++ {
		page = fmt.Sprintf("%s-%d.html", base, i)
	}
	used[page] = true
	return page
}

// readAttributes reads AttributesFile if the bundle has one.
func readAttributes(bundle fs.FS) ([]attributeSection, error) {
	raw, err := fs.ReadFile(bundle, AttributesFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("policy: docs: %w", err)
	}
	var doc map[string][]map[string]any
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("policy: docs: %s: want a mapping of sections to lists of {name, type, source, description}: %w", AttributesFile, err)
	}
	order := func(s string) int {
		switch s {
		case "principal":
			return 0
		case "resource":
			return 1
		}
		return 2
	}
	names := slices.Collect(maps.Keys(doc))
	slices.SortFunc(names, func(a, b string) int {
		if oa, ob := order(a), order(b); oa != ob {
			return oa - ob
		}
		return strings.Compare(a, b)
	})
	out := []attributeSection{}
	for _, sec := range names {
		as := attributeSection{Name: sec}
		for _, item := range doc[sec] {
			str := func(k string) string {
				v, ok := item[k]
				if !ok || v == nil {
					return ""
				}
				if s, ok := v.(string); ok {
					return s
				}
				return fmt.Sprint(v)
			}
			ad := attributeDoc{Name: str("name"), Type: str("type"), Source: str("source"), Description: strings.TrimSpace(str("description"))}
			other := maps.Clone(item)
			for _, k := range []string{"name", "type", "source", "description"} {
				delete(other, k)
			}
			if len(other) > 0 {
				norm, err := normalizeJSON(other)
				if err != nil {
					return nil, fmt.Errorf("policy: docs: %s: %s.%s: %w", AttributesFile, sec, ad.Name, err)
				}
				ad.Other = canonicalJSON(norm)
			}
			as.Attrs = append(as.Attrs, ad)
		}
		out = append(out, as)
	}
	return out, nil
}

func scenarioRow(s Scenario) scenarioDoc {
	p := s.Input.Principal
	principal := "anonymous"
	if p.ID != "" || len(p.Roles) > 0 {
		principal = p.ID
		if principal == "" {
			principal = "(no id)"
		}
		principal += " [" + strings.Join(p.Roles, ", ") + "]"
	}
	if len(p.Attrs) > 0 {
		principal += " " + canonicalJSON(p.Attrs)
	}
	if p.MFA {
		principal += " mfa"
	}
	if !p.Exists && p.ID != "" {
		principal += " (no entity)"
	}
	resource := s.Input.Resource.ID
	if len(s.Input.Resource.Attrs) > 0 {
		resource += " " + canonicalJSON(s.Input.Resource.Attrs)
	}
	if s.Input.Target != nil {
		resource += " → " + s.Input.Relation + " → " + s.Input.Target.ID
	}
	obl := ""
	if len(s.Expect.Obligations) > 0 {
		obl = canonicalJSON(s.Expect.Obligations)
	}
	return scenarioDoc{Name: s.Name, File: s.File, Description: s.Description, Action: s.Input.Action,
		Principal: principal, Resource: resource, Allow: s.Expect.Allow, Obligations: obl}
}

func prettyJSON(v any) (string, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return "", err
	}
	return strings.TrimSuffix(b.String(), "\n"), nil
}

var inlineCodeRE = regexp.MustCompile("`([^`]+)`")

// prose renders annotation or comment text: paragraphs split on blank
// lines, line breaks kept, `code` spans marked up, everything escaped.
func prose(s string) template.HTML {
	var b strings.Builder
	for para := range strings.SplitSeq(strings.TrimSpace(s), "\n\n") {
		para = strings.TrimSpace(para)
		if para == "" {
			continue
		}
		esc := template.HTMLEscapeString(para)
		esc = inlineCodeRE.ReplaceAllString(esc, "<code>$1</code>")
		b.WriteString("<p>")
		b.WriteString(esc)
		b.WriteString("</p>\n")
	}
	return template.HTML(b.String()) //nolint:gosec // escaped above
}

// firstLine is the first line of s, for summaries.
func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexAny(s, "\n"); i >= 0 {
		return s[:i]
	}
	return s
}

type page struct {
	Site  *siteDoc
	Title string
	Nav   string // the file name of the nav entry to highlight
	Data  any
}

func (s *siteDoc) render() (map[string][]byte, error) {
	funcs := template.FuncMap{
		"prose":     prose,
		"firstLine": firstLine,
		"join":      strings.Join,
		"json":      func(v any) string { return canonicalJSON(v) },
	}
	base, err := template.New("layout").Funcs(funcs).ParseFS(docTemplates, "templates/layout.html")
	if err != nil {
		return nil, fmt.Errorf("policy: docs templates: %w", err)
	}
	files := map[string][]byte{}
	renderPage := func(name, tmpl string, p page) error {
		t, err := base.Clone()
		if err != nil {
			return err
		}
		if _, err := t.ParseFS(docTemplates, path.Join("templates", tmpl)); err != nil {
			return fmt.Errorf("policy: docs templates: %w", err)
		}
		p.Site = s
		var buf bytes.Buffer
		if err := t.ExecuteTemplate(&buf, "layout", p); err != nil {
			return fmt.Errorf("policy: docs: render %s: %w", name, err)
		}
		files[name] = buf.Bytes()
		return nil
	}
	title := s.Title
	if title == "" {
		title = "Policy bundle"
	}
	var errs []error
	errs = append(errs, renderPage("index.html", "index.html", page{Title: title, Nav: "index.html"}))
	for _, r := range s.Rules {
		errs = append(errs, renderPage(r.Page, "rule.html", page{Title: "Rule " + r.Name, Nav: "index.html", Data: r}))
	}
	errs = append(errs, renderPage("actions.html", "actions.html", page{Title: "Actions and roles", Nav: "actions.html"}))
	if s.Attributes != nil {
		errs = append(errs, renderPage("attributes.html", "attributes.html", page{Title: "Attributes", Nav: "attributes.html"}))
	}
	errs = append(errs, renderPage("tests.html", "tests.html", page{Title: "Tests and scenarios", Nav: "tests.html"}))
	errs = append(errs, renderPage("data.html", "data.html", page{Title: "Bundle data", Nav: "data.html"}))
	for _, m := range s.Modules {
		errs = append(errs, renderPage(m.Page, "source.html", page{Title: m.File, Nav: "", Data: m}))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return files, nil
}
