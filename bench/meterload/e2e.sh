#!/usr/bin/env bash
# e2e.sh runs the end-to-end metering benchmark: it starts a fresh
# `companyos dev` (temporary data dir, its own ports, fresh ClickHouse and
# Postgres databases), issues a metering.write token, runs
# `meterload --e2e` against it, stops it and drops what it created.
#
#   bash deploy/local/up.sh
#   bash bench/meterload/e2e.sh                          # 50k events/s for 60 s
#   RATE=30000 DURATION=30s bash bench/meterload/e2e.sh --json
#   PROFILE=/tmp/cogs.prof bash bench/meterload/e2e.sh   # + 30 s CPU profile of the server
#
# Extra arguments go to meterload. Environment: RATE (50000), DURATION (60s),
# WARMUP (3s), BATCH (500), CONCURRENCY (32), PARTITIONS (6), PORT_BASE
# (18000: API +80, telemetry +90, Kafka +92), PROFILE (a file: the server's
# CPU profile, PROFILE_SECONDS (30) taken from 10 s into the measured window),
# KEEP=1 (keep the databases and the data dir), COMPANYOS_BIN (run this
# companyos binary instead of building ./cmd/companyos: A/B against a build
# of another commit).
set -euo pipefail
cd "$(dirname "$0")/../.."

RATE=${RATE:-50000}
DURATION=${DURATION:-60s}
WARMUP=${WARMUP:-3s}
BATCH=${BATCH:-500}
CONCURRENCY=${CONCURRENCY:-32}
PARTITIONS=${PARTITIONS:-6}
PORT_BASE=${PORT_BASE:-18000}
PROFILE=${PROFILE:-}
PROFILE_SECONDS=${PROFILE_SECONDS:-30}
API=127.0.0.1:$((PORT_BASE + 80))
TELEMETRY=127.0.0.1:$((PORT_BASE + 90))
KAFKA=127.0.0.1:$((PORT_BASE + 92))

work=$(mktemp -d /tmp/meterload-e2e.XXXXXX)
suffix=$(basename "$work" | tr -dc 'a-zA-Z0-9' | tr 'A-Z' 'a-z')
db="meterload_e2e_${suffix#meterloade2e}"
pgdsn="postgres://companyos:companyos@127.0.0.1:5432/${db}?sslmode=disable"
server_pid=""

cleanup() {
	if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
		kill -INT "$server_pid" 2>/dev/null || true
		for _ in $(seq 1 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.2; done
		kill -KILL "$server_pid" 2>/dev/null || true
	fi
	if [ "${KEEP:-}" != 1 ]; then
		clickhouse-client --query "DROP DATABASE IF EXISTS ${db}" >/dev/null 2>&1 || true
		(cd / && psql -X -q "postgres://companyos:companyos@127.0.0.1:5432/postgres?sslmode=disable" \
			-c "DROP DATABASE IF EXISTS ${db}" >/dev/null 2>&1) || true
		rm -rf "$work"
	else
		echo "e2e: kept $work, ClickHouse and Postgres database ${db}" >&2
	fi
}
trap cleanup EXIT

if [ -n "${COMPANYOS_BIN:-}" ]; then
	cp "$COMPANYOS_BIN" "$work/companyos"
else
	go build -o "$work/companyos" ./cmd/companyos
fi
go build -o "$work/meterload" ./bench/meterload

"$work/companyos" dev --data-dir "$work/data" --http-addr "$API" --metrics-addr "$TELEMETRY" --kafka-addr "$KAFKA" \
	--clickhouse-database "$db" --pg-dsn "$pgdsn" --partitions "$PARTITIONS" --pprof --log-level warn \
	>"$work/server.log" 2>&1 &
server_pid=$!
for i in $(seq 1 300); do
	if curl -fsS "http://$TELEMETRY/healthz/ready" >/dev/null 2>&1; then break; fi
	if ! kill -0 "$server_pid" 2>/dev/null; then cat "$work/server.log" >&2; exit 1; fi
	[ "$i" -lt 300 ] || { echo "e2e: server not ready after 60 s" >&2; cat "$work/server.log" >&2; exit 1; }
	sleep 0.2
done
"$work/companyos" token issue --data-dir "$work/data" --principal svc:load --tenant '*' --roles metering.write --ttl 2h \
	>"$work/token"

profile_pid=""
if [ -n "$PROFILE" ]; then
	(
		sleep $(( ${WARMUP%s} + 10 ))
		curl -fsS -o "$PROFILE" "http://$TELEMETRY/debug/pprof/profile?seconds=$PROFILE_SECONDS" ||
			echo "e2e: profile failed" >&2
	) &
	profile_pid=$!
fi

ch_pid=$(pgrep -o -x clickhouse-serv || pgrep -o -f /usr/sbin/clickhouse-server || echo 0)
rc=0
"$work/meterload" --e2e --url "http://$API" --token-file "$work/token" --kafka-brokers "$KAFKA" \
	--clickhouse-database "$db" --metrics-url "http://$TELEMETRY" --server-pid "$server_pid" --clickhouse-pid "$ch_pid" \
	--rate "$RATE" --duration "$DURATION" --warmup "$WARMUP" --batch "$BATCH" --concurrency "$CONCURRENCY" "$@" || rc=$?
[ -z "$profile_pid" ] || wait "$profile_pid" || true
if grep -q -E 'level=(ERROR|WARN)' "$work/server.log"; then
	echo "e2e: server warnings/errors:" >&2
	grep -E 'level=(ERROR|WARN)' "$work/server.log" | head -20 >&2
fi
exit "$rc"
