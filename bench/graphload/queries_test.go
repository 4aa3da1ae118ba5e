package graphload

import (
	"math/rand/v2"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/companyos/companyos/bench/fixture"
)

func TestParseQueries(t *testing.T) {
	src := `# a comment

rel(3hop, $rand_service -> 'db:*')
   # indented comment
neighbors($rand_user, depth=2)
path($rand_user, $rand_dataset, dir='both')
who_can('entity.update', $rand_dataset)
rel(3hop, $hub -> '$rand_db*', dir='in')
`
	qs, err := ParseQueries(strings.NewReader(src))
	if err != nil {
		t.Fatal(err)
	}
	want := []Query{
		{Line: 3, Text: "rel(3hop, $rand_service -> 'db:*')", Form: "rel", Placeholders: []string{"rand_service"}},
		{Line: 5, Text: "neighbors($rand_user, depth=2)", Form: "neighbors", Placeholders: []string{"rand_user"}},
		{Line: 6, Text: "path($rand_user, $rand_dataset, dir='both')", Form: "path", Placeholders: []string{"rand_dataset", "rand_user"}},
		{Line: 7, Text: "who_can('entity.update', $rand_dataset)", Form: "who_can", Placeholders: []string{"rand_dataset"}},
		// "$rand_db" inside a string is not a variable; binding it anyway is harmless.
		{Line: 8, Text: "rel(3hop, $hub -> '$rand_db*', dir='in')", Form: "rel", Placeholders: []string{"hub", "rand_db"}},
	}
	if len(qs) != len(want) {
		t.Fatalf("got %d queries, want %d: %+v", len(qs), len(want), qs)
	}
	for i := range want {
		g, w := qs[i], want[i]
		if g.Line != w.Line || g.Text != w.Text || g.Form != w.Form || !slices.Equal(g.Placeholders, w.Placeholders) {
			t.Errorf("query %d = %+v, want %+v", i, g, w)
		}
	}
}

func TestParseQueriesErrors(t *testing.T) {
	for name, tc := range map[string]struct{ src, want string }{
		"empty":        {"# nothing\n\n", "no queries"},
		"syntax":       {"rel(3hop, $rand_service -> 'db:*')\nrel(3hop 'svc:a')\n", "line 2: 1:10"},
		"unknown var":  {"neighbors($rand_team)\n", "line 1: "},
		"unknown op":   {"walk('svc:a')\n", "line 1: "},
		"all reported": {"walk('a')\nneighbors('a')\nwalk('b')\n", "line 3: "},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ParseQueries(strings.NewReader(tc.src))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestDefaultQueryFileParses(t *testing.T) {
	qs, err := LoadQueries("../queries/graph50k.txt")
	if err != nil {
		t.Fatal(err)
	}
	forms := map[string]int{}
	for _, q := range qs {
		forms[q.Form]++
	}
	for _, f := range []string{"rel", "neighbors", "path", "who_can"} {
		if forms[f] == 0 {
			t.Errorf("default query file has no %s query: %v", f, forms)
		}
	}
}

func TestVarsSubstitution(t *testing.T) {
	ids, err := FixtureIDSpace(50000)
	if err != nil {
		t.Fatal(err)
	}
	if want := (IDSpace{Services: 9000, Users: 20000, Datasets: 7500, DBs: 3500, Groups: 5000}); ids != want {
		t.Fatalf("FixtureIDSpace(50000) = %+v, want %+v", ids, want)
	}
	patterns := map[string]*regexp.Regexp{
		"rand_service": regexp.MustCompile(`^svc:service-(\d+)$`),
		"rand_user":    regexp.MustCompile(`^user:user-(\d+)$`),
		"rand_dataset": regexp.MustCompile(`^dataset:dataset-(\d+)$`),
		"rand_db":      regexp.MustCompile(`^db:db-(\d+)$`),
		"rand_group":   regexp.MustCompile(`^group:group-(\d+)$`),
	}
	limit := map[string]int{"rand_service": 9000, "rand_user": 20000, "rand_dataset": 7500, "rand_db": 3500, "rand_group": 5000}
	rng := rand.New(rand.NewPCG(1, 2))
	distinct := map[string]map[string]bool{}
	for range 2000 {
		vars := ids.Vars(rng, Placeholders)
		if len(vars) != len(Placeholders) {
			t.Fatalf("vars = %v, want one per placeholder", vars)
		}
		if vars["hub"] != "svc:service-0" {
			t.Fatalf("hub = %v", vars["hub"])
		}
		for name, re := range patterns {
			s, _ := vars[name].(string)
			m := re.FindStringSubmatch(s)
			if m == nil {
				t.Fatalf("%s = %q, want it to match %s", name, s, re)
			}
			if n, _ := strconv.Atoi(m[1]); n >= limit[name] {
				t.Fatalf("%s = %q, beyond the %d ids of its kind", name, s, limit[name])
			}
			if distinct[name] == nil {
				distinct[name] = map[string]bool{}
			}
			distinct[name][s] = true
		}
	}
	for name, seen := range distinct {
		if len(seen) < 500 {
			t.Errorf("%s: only %d distinct ids in 2000 draws", name, len(seen))
		}
	}
	// Only the placeholders a query uses are bound.
	if vars := ids.Vars(rng, []string{"rand_db"}); len(vars) != 1 || vars["rand_db"] == nil {
		t.Errorf("Vars(rand_db) = %v", vars)
	}
}

// TestIDSpaceMatchesFixture keeps FixtureIDSpace in step with the
// generator's kind mix: every id it can draw exists in a generated graph,
// and the largest of each kind is drawn from the range.
func TestIDSpaceMatchesFixture(t *testing.T) {
	for _, nodes := range []int{100, 1000, 1237} {
		g, err := fixture.Generate(1, nodes, 0)
		if err != nil {
			t.Fatal(err)
		}
		exists := map[string]bool{}
		for _, e := range g.Entities {
			exists[e.ID] = true
		}
		ids, err := FixtureIDSpace(nodes)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			prefix string
			n      int
		}{{"svc:service", ids.Services}, {"user:user", ids.Users}, {"dataset:dataset", ids.Datasets}, {"db:db", ids.DBs}, {"group:group", ids.Groups}} {
			last := c.prefix + "-" + strconv.Itoa(c.n-1)
			next := c.prefix + "-" + strconv.Itoa(c.n)
			if c.n < 1 || !exists[last] || exists[next] {
				t.Errorf("nodes %d: %s has %d ids, but the fixture has %s: %v, %s: %v", nodes, c.prefix, c.n, last, exists[last], next, exists[next])
			}
		}
		if !exists[Hub] {
			t.Errorf("nodes %d: no hub %s in the fixture", nodes, Hub)
		}
	}
}
