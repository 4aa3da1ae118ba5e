package meterfixture

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// File names WriteFiles writes into its directory.
const (
	EventsFile   = "events.jsonl"  // one record value per line, in production order
	KeysFile     = "keys.jsonl"    // {"key":…,"kind":…} per line, parallel to events.jsonl
	ExpectedFile = "expected.json" // Expected
	PricesFile   = "prices.json"   // the pricing.set payloads, in order
)

// WriteFiles writes the fixture into dir (created if missing). A record
// value never holds a newline (poison values included), so events.jsonl has
// one record per line.
func (f *Fixture) WriteFiles(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	ev, err := os.Create(filepath.Join(dir, EventsFile))
	if err != nil {
		return err
	}
	defer ev.Close()
	keys, err := os.Create(filepath.Join(dir, KeysFile))
	if err != nil {
		return err
	}
	defer keys.Close()
	ew, kw := bufio.NewWriter(ev), bufio.NewWriter(keys)
	for i, r := range f.Records {
		for _, c := range r.Value {
			if c == '\n' {
				return fmt.Errorf("meterfixture: record %d holds a newline", i)
			}
		}
		ew.Write(r.Value)
		ew.WriteByte('\n')
		b, _ := json.Marshal(r)
		kw.Write(b)
		kw.WriteByte('\n')
	}
	if err := ew.Flush(); err != nil {
		return err
	}
	if err := kw.Flush(); err != nil {
		return err
	}
	if err := writeJSON(filepath.Join(dir, ExpectedFile), f.Expected); err != nil {
		return err
	}
	return writeJSON(filepath.Join(dir, PricesFile), f.Prices)
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
