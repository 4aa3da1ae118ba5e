package app_test

import (
	"net/http"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/companyos/companyos/app"
	"github.com/companyos/companyos/commands"
	"github.com/companyos/companyos/metering"
	"github.com/companyos/companyos/projections/graph"
	"github.com/companyos/companyos/projections/ledger"
	"github.com/companyos/companyos/schemas"
)

type openAPIDoc struct {
	OpenAPI string                    `yaml:"openapi"`
	Paths   map[string]map[string]any `yaml:"paths"`
}

func documentedRoutes(t *testing.T) []string {
	t.Helper()
	var doc openAPIDoc
	if err := yaml.Unmarshal(schemas.OpenAPI, &doc); err != nil {
		t.Fatalf("schemas/openapi.yaml does not parse: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("openapi version %q", doc.OpenAPI)
	}
	var routes []string
	for path, item := range doc.Paths {
		for method, op := range item {
			switch method {
			case "get", "post", "put", "patch", "delete":
			default:
				continue
			}
			opMap, _ := op.(map[string]any)
			if _, ok := opMap["responses"]; !ok {
				t.Errorf("%s %s: no responses", method, path)
			}
			routes = append(routes, strings.ToUpper(method)+" "+path)
		}
	}
	sort.Strings(routes)
	return routes
}

// The document and the server agree route for route, and every documented
// route is really served (not the catch-all 404).
func TestOpenAPIMatchesLiveRoutes(t *testing.T) {
	documented := documentedRoutes(t)
	served := append(slices.Clone(commands.Routes), app.TelemetryRoutes...)
	served = append(served, graph.Routes...)
	served = append(served, ledger.Routes...)
	served = append(served, metering.Routes...)
	sort.Strings(served)
	if !slices.Equal(documented, served) {
		t.Fatalf("openapi.yaml routes\n  %v\nserved routes\n  %v", documented, served)
	}

	s := startStack(t, nil)
	param := regexp.MustCompile(`\{[a-z_]+\}`)
	for _, route := range documented {
		method, path, _ := strings.Cut(route, " ")
		base := s.base
		if slices.Contains(app.TelemetryRoutes, route) {
			base = "http://" + s.app.MetricsAddr()
		}
		url := base + param.ReplaceAllString(path, "rcpt_00000000000000000000000000000000")
		req, _ := http.NewRequest(method, url, strings.NewReader("{}"))
		req.Header.Set("Authorization", "Bearer "+s.admin)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", route, err)
		}
		resp.Body.Close()
		switch {
		case resp.StatusCode == http.StatusMethodNotAllowed:
			t.Errorf("%s: 405, route not served", route)
		case resp.StatusCode == http.StatusNotFound && !strings.Contains(path, "{"):
			t.Errorf("%s: 404, route not served", route)
		}
	}
}
