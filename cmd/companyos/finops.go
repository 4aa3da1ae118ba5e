package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/companyos/companyos/bench/meterfixture"
	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/internal/stores"
	"github.com/companyos/companyos/projections/cogs"
)

const fixtureMeteringUsage = `Usage: companyos fixture metering [--tenants 20] [--days 30] [--seed 7] [--out ./.data/meterfixture]
         [--post-url http://127.0.0.1:8080/v1/metering/events | --kafka-brokers 127.0.0.1:9092]
         [--api-url http://127.0.0.1:8080 --price-tenant finance] [--token T | --token-file F]

Generates metering usage for many tenants and days — with duplicates, late
and out-of-order events, unnormalised tags and units, events without a
tenant or service, a few poison records and injected cost anomalies — and
writes into --out:

  events.jsonl   the record values, one per line, in production order
  keys.jsonl     each record's id, key (tenant) and kind, line by line
  prices.json    the unit-price catalog (pricing.set payloads, in order)
  expected.json  the exact cost per tenant and day, computed without ClickHouse,
                 and the injected anomalies: compare with
                 companyos finops report --against <out>/expected.json

Optionally it also sends them:
  --post-url       POST the events to the ingest API (CloudEvents batches;
                   records that are not JSON are sent one by one). Events the
                   API refuses (invalid, no tenant) never reach COGS, so
                   expected.json is rewritten without them.
  --kafka-brokers  or produce the records straight to metering.events.v1
                   (the topic must exist: start companyos first).
  --api-url        set the prices with pricing.set commands through the
                   command API (tenant --price-tenant). Without it, set them
                   yourself from prices.json: COGS only prices usage that has
                   a price.
The same seed always gives the same data.
`

// runFixtureMetering runs `companyos fixture metering …` (args after
// "metering").
func runFixtureMetering(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("companyos fixture metering", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		cfg                                           meterfixture.Config
		start, out, postURL, apiURL, token, tokenFile string
		priceTenant                                   string
		brokers                                       listFlag
		batch                                         int
		asJSON                                        bool
	)
	fs.IntVar(&cfg.Tenants, "tenants", 20, "number of tenants")
	fs.IntVar(&cfg.Days, "days", 30, "number of days")
	fs.Uint64Var(&cfg.Seed, "seed", 7, "generator seed (same seed = same data)")
	fs.StringVar(&start, "start", "2026-06-01", "first day, UTC (YYYY-MM-DD); anomalies are judged once a day is over")
	fs.StringVar(&out, "out", "./.data/meterfixture", "directory for the generated files")
	fs.StringVar(&postURL, "post-url", "", "ingest API endpoint to POST the events to, e.g. http://127.0.0.1:8080/v1/metering/events")
	fs.Var(&brokers, "kafka-brokers", "produce the records straight to metering.events.v1 on these seed brokers instead")
	fs.IntVar(&batch, "batch", 500, "events per ingest API request")
	fs.StringVar(&apiURL, "api-url", "", "command API base URL for pricing.set commands, e.g. http://127.0.0.1:8080")
	fs.StringVar(&priceTenant, "price-tenant", "finance", "tenant the pricing.set commands are submitted under")
	fs.StringVar(&token, "token", "", "bearer token for --post-url and --api-url (overrides --token-file)")
	fs.StringVar(&tokenFile, "token-file", "./.data/admin.token", "file holding the bearer token")
	fs.BoolVar(&asJSON, "json", false, "print the summary as JSON on stdout")
	fs.Usage = func() {
		fmt.Fprint(stderr, fixtureMeteringUsage+"\nFlags (each also COMPANYOS_<NAME>):\n")
		fs.PrintDefaults()
	}
	if err := parse(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "companyos fixture metering: %v\n", err)
		return 2
	}
	t, err := time.Parse("2006-01-02", start)
	if err != nil {
		fmt.Fprintf(stderr, "companyos fixture metering: --start: %v\n", err)
		return 2
	}
	cfg.Start = t
	if postURL != "" && len(brokers) > 0 {
		fmt.Fprintln(stderr, "companyos fixture metering: use --post-url or --kafka-brokers, not both")
		return 2
	}
	if batch < 1 {
		fmt.Fprintln(stderr, "companyos fixture metering: --batch must be positive")
		return 2
	}
	if (postURL != "" || apiURL != "") && token == "" {
		raw, err := os.ReadFile(tokenFile)
		if err != nil {
			fmt.Fprintf(stderr, "companyos fixture metering: --token-file: %v\n", err)
			return 2
		}
		token = strings.TrimSpace(string(raw))
	}

	fx, err := meterfixture.Generate(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "companyos fixture metering: %v\n", err)
		return 1
	}
	summary := map[string]any{"out": out, "counts": fx.Expected.Counts, "anomalies": fx.Expected.Anomalies}
	if apiURL != "" {
		set, err := postPrices(ctx, apiURL, token, priceTenant, cfg.Seed, fx.Prices, stderr)
		summary["prices_set"] = set
		if err != nil {
			fmt.Fprintf(stderr, "companyos fixture metering: prices: %v\n", err)
			return 1
		}
	}
	switch {
	case postURL != "":
		res, err := postEvents(ctx, postURL, token, batch, fx.Records)
		summary["ingest"] = res
		if err != nil {
			fmt.Fprintf(stderr, "companyos fixture metering: post: %v\n", err)
			return 1
		}
		if len(res.refused) > 0 {
			fx.Recompute(res.refused)
		}
	case len(brokers) > 0:
		n, err := produceRecords(ctx, brokers, fx.Records)
		summary["produced"] = n
		if err != nil {
			fmt.Fprintf(stderr, "companyos fixture metering: produce: %v\n", err)
			return 1
		}
	}
	if err := fx.WriteFiles(out); err != nil {
		fmt.Fprintf(stderr, "companyos fixture metering: %v\n", err)
		return 1
	}
	summary["expected_total"] = fx.Expected.Total
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(summary)
		return 0
	}
	c := fx.Expected.Counts
	fmt.Fprintf(stdout, "generated %d records: %d events (%d late, %d without a tenant, %d without a service), %d duplicates, %d poison\n",
		c.Records, c.Events, c.Late, c.Unattributed, c.NoService, c.Duplicates, c.Poison)
	if res, ok := summary["ingest"].(*ingestResult); ok {
		fmt.Fprintf(stdout, "ingest API: %d accepted (%d as duplicates), %d refused, in %d requests\n", res.Accepted, res.Duplicates, res.Refused, res.Requests)
	}
	if n, ok := summary["produced"]; ok {
		fmt.Fprintf(stdout, "produced %v records to %s\n", n, events.TopicMetering)
	}
	if n, ok := summary["prices_set"]; ok {
		fmt.Fprintf(stdout, "prices set through the command API: %v\n", n)
	}
	fmt.Fprintf(stdout, "expected total cost %s %s over %d tenant-days; %d injected anomalies\n", fx.Expected.Total, fx.Expected.Currency,
		len(fx.Expected.Costs), len(fx.Expected.Anomalies))
	fmt.Fprintf(stdout, "wrote %s; check with: companyos finops report --against %s\n", out, filepath.Join(out, meterfixture.ExpectedFile))
	return 0
}

type ingestResult struct {
	Requests   int `json:"requests"`
	Accepted   int `json:"accepted"`
	Duplicates int `json:"duplicates"`
	Refused    int `json:"refused"`
	refused    map[string]bool
}

// postEvents sends the records to the ingest API: runs of JSON records as
// CloudEvents batches, anything else alone. 429/5xx and transport errors
// are retried.
func postEvents(ctx context.Context, url, token string, batch int, recs []meterfixture.Record) (*ingestResult, error) {
	res := &ingestResult{refused: map[string]bool{}}
	client := &http.Client{Timeout: time.Minute}
	send := func(ct string, body []byte, ids []string) error {
		var resp *http.Response
		var payload []byte
		for attempt := 0; ; attempt++ {
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
			if err != nil {
				return err
			}
			req.Header.Set("Content-Type", ct)
			req.Header.Set("Authorization", "Bearer "+token)
			resp, err = client.Do(req)
			if err == nil {
				payload, _ = io.ReadAll(io.LimitReader(resp.Body, 8<<20))
				resp.Body.Close()
				if resp.StatusCode != http.StatusTooManyRequests && resp.StatusCode < 500 {
					break
				}
				err = fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(payload))
			}
			if attempt == 5 || ctx.Err() != nil {
				return err
			}
			time.Sleep(time.Duration(200<<attempt) * time.Millisecond)
		}
		res.Requests++
		var r struct {
			Accepted []struct {
				ID        string `json:"id"`
				Duplicate bool   `json:"duplicate"`
			} `json:"accepted"`
			Rejected []struct {
				Index int `json:"index"`
			} `json:"rejected"`
		}
		_ = json.Unmarshal(payload, &r)
		switch {
		case resp.StatusCode == http.StatusUnauthorized:
			return fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(payload))
		case resp.StatusCode >= 300:
			// Nothing of this request was accepted.
			for _, id := range ids {
				res.refused[id] = true
			}
			res.Refused += len(ids)
			return nil
		}
		for _, a := range r.Accepted {
			res.Accepted++
			if a.Duplicate {
				res.Duplicates++
			}
		}
		for _, rj := range r.Rejected {
			if rj.Index >= 0 && rj.Index < len(ids) {
				res.refused[ids[rj.Index]] = true
			}
			res.Refused++
		}
		return nil
	}
	var buf [][]byte
	var ids []string
	flush := func() error {
		if len(buf) == 0 {
			return nil
		}
		body := append([]byte("["), bytes.Join(buf, []byte(","))...)
		body = append(body, ']')
		err := send("application/cloudevents-batch+json", body, ids)
		buf, ids = buf[:0], ids[:0]
		return err
	}
	for _, r := range recs {
		if !json.Valid(r.Value) {
			if err := flush(); err != nil {
				return res, err
			}
			if err := send("application/cloudevents+json", r.Value, []string{r.ID}); err != nil {
				return res, err
			}
			continue
		}
		buf, ids = append(buf, r.Value), append(ids, r.ID)
		if len(buf) == batch {
			if err := flush(); err != nil {
				return res, err
			}
		}
	}
	return res, flush()
}

// produceRecords writes the records to metering.events.v1, keyed by tenant.
func produceRecords(ctx context.Context, brokers []string, recs []meterfixture.Record) (int, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ProducerBatchMaxBytes(4<<20), kgo.MaxBufferedRecords(1<<17))
	if err != nil {
		return 0, err
	}
	defer cl.Close()
	krecs := make([]*kgo.Record, len(recs))
	for i, r := range recs {
		krecs[i] = &kgo.Record{Topic: events.TopicMetering, Value: r.Value}
		if r.Key != "" {
			krecs[i].Key = []byte(r.Key)
		}
	}
	if err := cl.ProduceSync(ctx, krecs...).FirstErr(); err != nil {
		return 0, fmt.Errorf("%w (does %s exist? start companyos first)", err, events.TopicMetering)
	}
	return len(krecs), nil
}

// postPrices submits the catalog as pricing.set commands. The idempotency
// key is derived from the seed and position, so re-running does not set a
// price twice.
func postPrices(ctx context.Context, apiURL, token, tenant string, seed uint64, prices []cogs.PriceSet, stderr io.Writer) (int, error) {
	client := &http.Client{Timeout: 30 * time.Second}
	set := 0
	for i, p := range prices {
		body, _ := json.Marshal(map[string]any{"tenant": tenant, "type": cogs.ActionPricingSet, "payload": p})
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(apiURL, "/")+"/v1/commands", bytes.NewReader(body))
		if err != nil {
			return set, err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Idempotency-Key", fmt.Sprintf("meterfixture-%d-price-%d", seed, i))
		resp, err := client.Do(req)
		if err != nil {
			return set, err
		}
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
		resp.Body.Close()
		if resp.StatusCode >= 300 {
			return set, fmt.Errorf("pricing.set %s %s: %s: %s", p.Meter, p.EffectiveFrom, resp.Status, bytes.TrimSpace(msg))
		}
		set++
	}
	return set, nil
}

const finopsReportUsage = `Usage: companyos finops report --against expected.json [--json] [--wait 2m]

Runs cost_per_tenant_day.sql and anomalies_day.sql (schemas/clickhouse/queries)
against ClickHouse and compares them with the expected costs and injected
anomalies that "companyos fixture metering" wrote: prints the attribution
error (Σ|ClickHouse − expected| over tenant-days, as a share of the expected
total; exactly 0.00% when every event was counted once at the right price)
and which injected anomalies the ±3σ rule found. Exit status 0 when costs
match exactly and the anomalies found are exactly the injected ones.
`

// runFinopsReport runs `companyos finops report …` (args after "report").
func runFinopsReport(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("companyos finops report", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		against, addr, database string
		asJSON                  bool
		wait, interval          time.Duration
	)
	fs.StringVar(&against, "against", "", "expected.json written by companyos fixture metering (required)")
	fs.StringVar(&addr, "clickhouse-addr", "127.0.0.1:9000", "ClickHouse native-protocol address")
	fs.StringVar(&database, "clickhouse-database", "companyos", "ClickHouse database")
	fs.BoolVar(&asJSON, "json", false, "print the report as JSON on stdout")
	fs.DurationVar(&wait, "wait", 0, "keep re-checking until the report is OK or this long has passed (the projector may still be catching up)")
	fs.DurationVar(&interval, "interval", 2*time.Second, "time between checks with --wait")
	fs.Usage = func() {
		fmt.Fprint(stderr, finopsReportUsage+"\nFlags (each also COMPANYOS_<NAME>):\n")
		fs.PrintDefaults()
	}
	if err := parse(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "companyos finops report: %v\n", err)
		return 2
	}
	if against == "" {
		fmt.Fprintln(stderr, "companyos finops report: --against is required")
		return 2
	}
	exp, err := meterfixture.ReadExpected(against)
	if err != nil {
		fmt.Fprintf(stderr, "companyos finops report: %v\n", err)
		return 2
	}
	conn, err := stores.EnsureClickHouse(ctx, addr, database)
	if err != nil {
		fmt.Fprintf(stderr, "companyos finops report: %v\n", err)
		return 1
	}
	defer conn.Close()
	if err := cogs.CheckMigrated(ctx, conn); err != nil {
		fmt.Fprintf(stderr, "companyos finops report: %v\n", err)
		return 1
	}
	deadline := time.Now().Add(wait)
	var rep meterfixture.Report
	for {
		costs, err := cogs.CostPerTenantDay(ctx, conn)
		if err != nil {
			fmt.Fprintf(stderr, "companyos finops report: %v\n", err)
			return 1
		}
		anomalies, err := cogs.DayAnomalies(ctx, conn)
		if err != nil {
			fmt.Fprintf(stderr, "companyos finops report: %v\n", err)
			return 1
		}
		rep = meterfixture.Compare(exp, costs, anomalies)
		if rep.OK || !time.Now().Before(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return 1
		case <-time.After(interval):
		}
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(rep)
	} else {
		rep.WriteText(stdout)
	}
	if !rep.OK {
		return 1
	}
	return 0
}
