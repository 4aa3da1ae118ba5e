package cogs

import (
	"context"
	"fmt"
	"io/fs"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/companyos/companyos/schemas"
)

// The FinOps queries in schemas/clickhouse/queries, by file name without
// ".sql". Each file is one statement with its documentation at the top.
const (
	QueryCostPerTenantDay        = "cost_per_tenant_day"
	QueryCostPerTenantServiceDay = "cost_per_tenant_service_day"
	QueryCostPerTag              = "cost_per_tag"
	QueryTopTenants              = "top_tenants"
	QueryUnitEconomics           = "unit_economics"
	QueryUnattributedSpend       = "unattributed_spend"
	QueryDayOverDay              = "day_over_day"
	QueryAnomaliesDay            = "anomalies_day"
	QueryAnomaliesHour           = "anomalies_hour"
)

// QueryNames lists the embedded FinOps queries.
func QueryNames() ([]string, error) {
	entries, err := fs.ReadDir(schemas.ClickHouse, "clickhouse/queries")
	if err != nil {
		return nil, fmt.Errorf("cogs: queries: %w", err)
	}
	var out []string
	for _, e := range entries {
		if n, ok := strings.CutSuffix(e.Name(), ".sql"); ok && !e.IsDir() {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out, nil
}

// Query returns the text of a FinOps query, exactly as in its file (what
// clickhouse-client runs).
func Query(name string) (string, error) {
	b, err := fs.ReadFile(schemas.ClickHouse, "clickhouse/queries/"+name+".sql")
	if err != nil {
		return "", fmt.Errorf("cogs: query %s: %w", name, err)
	}
	return string(b), nil
}

// TenantDayCost is one row of cost_per_tenant_day.sql.
type TenantDayCost struct {
	Tenant string
	Day    time.Time // UTC midnight
	Cost   Decimal
}

// CostPerTenantDay runs cost_per_tenant_day.sql.
func CostPerTenantDay(ctx context.Context, conn driver.Conn) ([]TenantDayCost, error) {
	q, err := Query(QueryCostPerTenantDay)
	if err != nil {
		return nil, err
	}
	rows, err := conn.Query(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("cogs: %s: %w", QueryCostPerTenantDay, err)
	}
	defer rows.Close()
	var out []TenantDayCost
	for rows.Next() {
		var r TenantDayCost
		if err := rows.Scan(&r.Tenant, &r.Day, &r.Cost); err != nil {
			return nil, fmt.Errorf("cogs: %s: %w", QueryCostPerTenantDay, err)
		}
		r.Day = dayUTC(r.Day)
		out = append(out, r)
	}
	return out, rows.Err()
}

// Anomaly is one row of anomalies_day.sql (At is the day) or
// anomalies_hour.sql (At is the hour).
type Anomaly struct {
	Tenant         string
	At             time.Time
	Cost           Decimal
	BaselineMean   float64
	BaselineStddev float64
	ZScore         float64
	Direction      string // "spike" or "drop"
}

// DayAnomalies runs anomalies_day.sql.
func DayAnomalies(ctx context.Context, conn driver.Conn) ([]Anomaly, error) {
	return anomalies(ctx, conn, QueryAnomaliesDay)
}

// HourAnomalies runs anomalies_hour.sql.
func HourAnomalies(ctx context.Context, conn driver.Conn) ([]Anomaly, error) {
	return anomalies(ctx, conn, QueryAnomaliesHour)
}

func anomalies(ctx context.Context, conn driver.Conn, name string) ([]Anomaly, error) {
	q, err := Query(name)
	if err != nil {
		return nil, err
	}
	rows, err := conn.Query(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("cogs: %s: %w", name, err)
	}
	defer rows.Close()
	var out []Anomaly
	for rows.Next() {
		var a Anomaly
		if err := rows.Scan(&a.Tenant, &a.At, &a.Cost, &a.BaselineMean, &a.BaselineStddev, &a.ZScore, &a.Direction); err != nil {
			return nil, fmt.Errorf("cogs: %s: %w", name, err)
		}
		a.At = a.At.UTC()
		if name == QueryAnomaliesDay {
			a.At = dayUTC(a.At)
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

// dayUTC returns the UTC midnight of the calendar day t names (a Date read
// from ClickHouse may come back in the local zone).
func dayUTC(t time.Time) time.Time {
	y, m, d := t.Date()
	return time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
}

// QueryResult is a query's output as text: Decimals exact and trimmed of
// trailing zeros, Dates as 2006-01-02, DateTimes as RFC 3339 in UTC, floats
// in Go's shortest form, NULL as "NULL".
type QueryResult struct {
	Columns []string
	Rows    [][]string
}

// RunQuery runs a FinOps query by name and returns its output as text.
func RunQuery(ctx context.Context, conn driver.Conn, name string) (QueryResult, error) {
	q, err := Query(name)
	if err != nil {
		return QueryResult{}, err
	}
	return runText(ctx, conn, q)
}

func runText(ctx context.Context, conn driver.Conn, q string) (QueryResult, error) {
	rows, err := conn.Query(ctx, q)
	if err != nil {
		return QueryResult{}, err
	}
	defer rows.Close()
	var res QueryResult
	types := rows.ColumnTypes()
	res.Columns = rows.Columns()
	for rows.Next() {
		dest := make([]any, len(types))
		for i, ct := range types {
			dest[i] = reflect.New(ct.ScanType()).Interface()
		}
		if err := rows.Scan(dest...); err != nil {
			return QueryResult{}, err
		}
		row := make([]string, len(dest))
		for i, d := range dest {
			row[i] = cellText(types[i].DatabaseTypeName(), reflect.ValueOf(d).Elem())
		}
		res.Rows = append(res.Rows, row)
	}
	return res, rows.Err()
}

func cellText(dbType string, v reflect.Value) string {
	for v.Kind() == reflect.Pointer || v.Kind() == reflect.Interface {
		if v.IsNil() {
			return "NULL"
		}
		v = v.Elem()
	}
	x := v.Interface()
	base := strings.TrimSuffix(strings.TrimPrefix(dbType, "Nullable("), ")")
	switch t := x.(type) {
	case time.Time:
		if strings.HasPrefix(base, "Date") && !strings.HasPrefix(base, "DateTime") {
			return t.Format("2006-01-02")
		}
		return t.UTC().Format(time.RFC3339)
	case float64:
		return strconv.FormatFloat(t, 'g', -1, 64)
	case float32:
		return strconv.FormatFloat(float64(t), 'g', -1, 32)
	case fmt.Stringer:
		if strings.HasPrefix(base, "Decimal") {
			var d Decimal
			if err := d.Scan(t); err == nil {
				return d.String()
			}
		}
		return t.String()
	}
	return fmt.Sprint(x)
}
