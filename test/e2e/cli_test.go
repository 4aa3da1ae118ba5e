package e2e

import (
	"strings"
	"testing"
	"time"
)

// TestCLIHelp checks that every subcommand documents itself and exits 0,
// and that a mistyped command fails.
func TestCLIHelp(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string // in stdout+stderr
	}{
		{[]string{"dev", "--help"}, "Usage: companyos dev"},
		{[]string{"serve", "--help"}, "Usage: companyos serve"},
		{[]string{"token", "issue", "--help"}, "Usage: companyos token issue"},
		{[]string{"token", "--help"}, "Usage: companyos token issue"},
		{[]string{"help"}, "Usage:"},
		{[]string{"--help"}, "Usage:"},
		{[]string{"version"}, "companyos "},
		// Every sub-subcommand answers --help too.
		{[]string{"fixture", "graph", "--help"}, "--tenant"},
		{[]string{"fixture", "metering", "--help"}, "Usage: companyos fixture metering"},
		{[]string{"policy", "test", "--help"}, "policy test"},
		{[]string{"policy", "coverage", "--help"}, "policy coverage"},
		{[]string{"policy", "docs", "--help"}, "policy docs"},
		{[]string{"policy", "simulate", "--help"}, "Usage: companyos policy simulate"},
		{[]string{"evidence", "stats", "--help"}, "evidence stats"},
		{[]string{"evidence", "compact", "--help"}, "evidence compact"},
		{[]string{"evidence", "get", "--help"}, "evidence get"},
		{[]string{"dlq", "list", "--help"}, "dlq list"},
		{[]string{"dlq", "show", "--help"}, "dlq show"},
		{[]string{"dlq", "replay", "--help"}, "dlq replay"},
		{[]string{"finops", "report", "--help"}, "finops report"},
		{[]string{"replay", "--help"}, "replay"},
		{[]string{"export", "--help"}, "export"},
		{[]string{"verify", "--help"}, "verify"},
		{[]string{"migrate", "--help"}, "clickhouse"},
	} {
		code, stdout, stderr := runCLI(t, 10*time.Second, tc.args...)
		out := stdout + stderr
		if code != 0 || !strings.Contains(out, tc.want) {
			t.Errorf("companyos %s: exit %d, output:\n%s\nwant exit 0 and %q", strings.Join(tc.args, " "), code, out, tc.want)
		}
	}
	// Every command the top-level usage lists answers --help, so a new
	// subcommand is covered without touching this test.
	_, usage, _ := runCLI(t, 10*time.Second, "help")
	_, section, ok := strings.Cut(usage, "Commands:\n")
	if !ok {
		t.Fatalf("companyos help has no Commands: section:\n%s", usage)
	}
	listed := 0
	for _, line := range strings.Split(section, "\n") {
		if !strings.HasPrefix(line, "  ") {
			break // the blank line after the list
		}
		name := strings.Fields(line)[0]
		listed++
		code, stdout, stderr := runCLI(t, 10*time.Second, name, "--help")
		if code != 0 || strings.TrimSpace(stdout+stderr) == "" {
			t.Errorf("companyos %s --help: exit %d, output:\n%s%s\nwant exit 0 and usage", name, code, stdout, stderr)
		}
	}
	if listed < 4 {
		t.Errorf("companyos help lists %d commands, want at least dev, serve, token, version:\n%s", listed, usage)
	}

	// Flag usage lists the flags, including the env variable hint.
	_, _, stderr := runCLI(t, 10*time.Second, "dev", "--help")
	for _, flag := range []string{"-data-dir", "-http-addr", "-kafka-addr", "COMPANYOS_"} {
		if !strings.Contains(stderr, flag) {
			t.Errorf("companyos dev --help does not mention %s:\n%s", flag, stderr)
		}
	}

	for _, args := range [][]string{{"frobnicate"}, {}, {"dev", "--no-such-flag"}, {"token", "revoke"}} {
		code, _, stderr := runCLI(t, 10*time.Second, args...)
		if code == 0 || (!strings.Contains(stderr, "Usage") && !strings.Contains(stderr, "flag provided but not defined")) {
			t.Errorf("companyos %s: exit %d, stderr:\n%s\nwant non-zero with usage", strings.Join(args, " "), code, stderr)
		}
	}
	if _, _, stderr := runCLI(t, 10*time.Second, "frobnicate"); !strings.Contains(stderr, `unknown command "frobnicate"`) {
		t.Errorf("companyos frobnicate: stderr does not name the unknown command:\n%s", stderr)
	}
}
