package graphload

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"regexp"
	"slices"
	"strings"

	"github.com/companyos/companyos/projections/graph"
)

// Query is one line of a query file: graph query language text whose
// placeholders are bound per request.
type Query struct {
	// Line is the 1-based line number in the file.
	Line int
	// Text is the query as written; it is sent as is.
	Text string
	// Form is the query form: rel, neighbors, path or who_can.
	Form string
	// Placeholders are the placeholder names (without "$") the query uses,
	// sorted.
	Placeholders []string
}

// Placeholders a query file may use. Each is a graph query variable, bound
// per request: $rand_<kind> to a uniformly random id of that kind in the
// fixture graph (see IDSpace), $hub to the fixture's hub service.
var Placeholders = []string{"rand_service", "rand_user", "rand_dataset", "rand_db", "rand_group", "hub"}

// Hub is the id $hub binds to: the fixture draws dependency targets from a
// Zipf distribution starting at index 0, so svc:service-0 is the most
// depended-on service.
const Hub = "svc:service-0"

var varRe = regexp.MustCompile(`\$([\pL_][\pL\pN_]*)`)

// ParseQueries reads a query file: one query per line, blank lines and lines
// starting with "#" ignored. Every query is parsed with the server's own
// parser (placeholders bound to sample ids), so a bad file fails here, with
// its line number, instead of as a stream of 422s.
func ParseQueries(r io.Reader) ([]Query, error) {
	sample := IDSpace{Services: 1, Users: 1, Datasets: 1, DBs: 1, Groups: 1}.Vars(rand.New(rand.NewPCG(0, 0)), Placeholders)
	var out []Query
	var errs []error
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		q, err := graph.Parse(text, sample)
		if err != nil {
			errs = append(errs, fmt.Errorf("line %d: %w", n, err))
			continue
		}
		var used []string
		// A "$name" inside a quoted string is matched here too; binding a
		// variable the query does not use is harmless.
		for _, m := range varRe.FindAllStringSubmatch(text, -1) {
			if slices.Contains(Placeholders, m[1]) && !slices.Contains(used, m[1]) {
				used = append(used, m[1])
			}
		}
		slices.Sort(used)
		out = append(out, Query{Line: n, Text: text, Form: string(q.Op), Placeholders: used})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read queries: %w", err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, errors.New("no queries (only blank lines and comments)")
	}
	return out, nil
}

// LoadQueries reads and parses a query file.
func LoadQueries(path string) ([]Query, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	qs, err := ParseQueries(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return qs, nil
}

// IDSpace is how many nodes of each kind the fixture graph has; ids of a
// kind are numbered from 0 (svc:service-N, user:user-N, dataset:dataset-N,
// db:db-N, group:group-N).
type IDSpace struct {
	Services, Users, Datasets, DBs, Groups int
}

// fixtureKinds mirrors the kind weights of bench/fixture (kindMix), in the
// same order: the per-kind counts are computed with the same arithmetic,
// the last kind taking the remainder. TestIDSpaceMatchesFixture keeps the
// two in step.
var fixtureKinds = []struct {
	kind   string
	weight int
}{
	{"user", 40}, {"service", 18}, {"dataset", 15}, {"group", 10}, {"db", 7}, {"team", 6}, {"role", 4},
}

// FixtureIDSpace is the id space of a fixture graph of nodes entities
// (companyos fixture graph --nodes).
func FixtureIDSpace(nodes int) (IDSpace, error) {
	if nodes < len(fixtureKinds)*2 {
		return IDSpace{}, fmt.Errorf("nodes must be at least %d", len(fixtureKinds)*2)
	}
	counts := map[string]int{}
	remaining := nodes
	for i, k := range fixtureKinds {
		n := nodes * k.weight / 100
		if i == len(fixtureKinds)-1 {
			n = remaining
		}
		remaining -= n
		counts[k.kind] = n
	}
	return IDSpace{Services: counts["service"], Users: counts["user"], Datasets: counts["dataset"],
		DBs: counts["db"], Groups: counts["group"]}, nil
}

// Vars binds the named placeholders to random ids.
func (s IDSpace) Vars(rng *rand.Rand, names []string) map[string]any {
	vars := make(map[string]any, len(names))
	pick := func(prefix string, n int) string {
		return fmt.Sprintf("%s-%d", prefix, rng.IntN(max(n, 1)))
	}
	for _, name := range names {
		switch name {
		case "rand_service":
			vars[name] = pick("svc:service", s.Services)
		case "rand_user":
			vars[name] = pick("user:user", s.Users)
		case "rand_dataset":
			vars[name] = pick("dataset:dataset", s.Datasets)
		case "rand_db":
			vars[name] = pick("db:db", s.DBs)
		case "rand_group":
			vars[name] = pick("group:group", s.Groups)
		case "hub":
			vars[name] = Hub
		}
	}
	return vars
}
