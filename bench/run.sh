#!/usr/bin/env bash
# run.sh reproduces the numbers in bench/README.md: it builds companyos and
# cmdload, and for each scenario starts a fresh `companyos dev` (temp data dir,
# non-default ports), runs cmdload against it, saves the JSON summary and the
# server's /metrics, and stops the server again.
#
# Needs Postgres and ClickHouse: run deploy/local/up.sh first.
#
#   bash bench/run.sh                 # every scenario
#   bash bench/run.sh sat-c64 lat-1000  # some of them (also sat-c<N>,
#                                       # sat-mixed-c<N>, lat-<rate>)
#
# Environment (optional): REV (build companyos from this git revision via
# `git archive`, e.g. REV=HEAD, instead of the working tree, so the numbers
# belong to one commit), OUT (results directory, default
# bench/results/<date>), HTTP_PORT/METRICS_PORT/KAFKA_PORT (28080/29090/29092),
# DURATION_SAT (30s), DURATION_LAT (60s), WARMUP (3s), QUIET_IDLE (minimum
# machine idle %, default 80) and QUIET_WAIT (seconds to wait for it, 600).
#
# The load generator shares the machine with the server, and on a shared
# machine other processes skew the result: before each scenario run.sh waits
# until the machine has been QUIET_IDLE % idle for 5 s (or QUIET_WAIT passed;
# it then runs anyway and says so). Each JSON records machine_busy_pct, so
# "other processes" = machine - server - load generator can be checked.
#
# When the binary has --pprof, closed-loop scenarios also save a CPU profile
# of the server over the measured window (<scenario>.cpu.pprof; PROFILE_S
# seconds, default 20): go tool pprof -top <scenario>.cpu.pprof.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/bench/results/$(date -u +%Y-%m-%d)}
HTTP_PORT=${HTTP_PORT:-28080}
METRICS_PORT=${METRICS_PORT:-29090}
KAFKA_PORT=${KAFKA_PORT:-29092}
DURATION_SAT=${DURATION_SAT:-30s}
DURATION_LAT=${DURATION_LAT:-60s}
WARMUP=${WARMUP:-3s}
QUIET_IDLE=${QUIET_IDLE:-80}
QUIET_WAIT=${QUIET_WAIT:-600}
PROFILE_S=${PROFILE_S:-20}
REV=${REV:-}
PG_DSN="postgres://companyos:companyos@127.0.0.1:5432/cosbench?sslmode=disable"

WORK=$(mktemp -d /tmp/cosbench.XXXXXX)
SERVER_PID=
cleanup() {
	if [ -n "$SERVER_PID" ]; then kill -TERM "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
	rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$OUT"
echo "run.sh: building into $WORK, results in $OUT"
if [ -n "$REV" ]; then
	mkdir "$WORK/src"
	git archive "$REV" | tar -x -C "$WORK/src"
	(cd "$WORK/src" && go build -o "$WORK/companyos" ./cmd/companyos)
	built="$(git rev-parse "$REV") (git archive of $REV)"
else
	go build -o "$WORK/companyos" ./cmd/companyos
	built="$(git rev-parse HEAD) + working tree ($(git status --short -- . ':!bench' | wc -l) changed files outside bench/)"
fi
go build -o "$WORK/cmdload" ./bench/cmdload
PPROF_FLAG=()
if "$WORK/companyos" dev --help 2>&1 | grep -q -- '-pprof'; then PPROF_FLAG=(--pprof); fi
{
	echo "date:     $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "server:   $built"
	echo "go:       $(go version)"
	echo "cpu:      $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
	echo "memory:   $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
	echo "kernel:   $(uname -r)"
} | tee "$OUT/version.txt"

# start_server NAME [extra companyos flags...]
start_server() {
	local name=$1
	shift
	local dir="$WORK/data-$name"
	"$WORK/companyos" dev --data-dir "$dir" \
		--http-addr "127.0.0.1:$HTTP_PORT" --metrics-addr "127.0.0.1:$METRICS_PORT" --kafka-addr "127.0.0.1:$KAFKA_PORT" \
		--pg-dsn "$PG_DSN" --clickhouse-database cosbench --log-level warn ${PPROF_FLAG[@]+"${PPROF_FLAG[@]}"} "$@" >"$OUT/$name.server.log" 2>&1 &
	SERVER_PID=$!
	for _ in $(seq 1 300); do
		if curl -fsS "http://127.0.0.1:$METRICS_PORT/healthz/ready" >/dev/null 2>&1; then
			TOKEN_FILE="$dir/admin.token"
			return 0
		fi
		kill -0 "$SERVER_PID" 2>/dev/null || { cat "$OUT/$name.server.log" >&2; echo "run.sh: server died" >&2; exit 1; }
		sleep 0.1
	done
	echo "run.sh: server not ready after 30s" >&2
	exit 1
}

stop_server() {
	curl -fsS "http://127.0.0.1:$METRICS_PORT/metrics" >"$OUT/$1.metrics" 2>/dev/null || true
	kill -TERM "$SERVER_PID"
	wait "$SERVER_PID" || true
	SERVER_PID=
	# The log starts with the bootstrap admin token: keep it out of results.
	sed -i -E 's/^  ey[A-Za-z0-9_.-]+$/  <admin token redacted>/' "$OUT/$1.server.log"
}

# idle_pct prints the machine's idle % over the next 5 seconds (/proc/stat).
idle_pct() {
	local a b
	a=($(head -1 /proc/stat))
	sleep 5
	b=($(head -1 /proc/stat))
	local total=0 i
	for i in 1 2 3 4 5 6 7 8; do total=$((total + b[i] - a[i])); done
	echo $(( (100 * (b[4] - a[4] + b[5] - a[5])) / (total > 0 ? total : 1) ))
}

wait_quiet() {
	local deadline=$((SECONDS + QUIET_WAIT)) idle
	while :; do
		idle=$(idle_pct)
		if [ "$idle" -ge "$QUIET_IDLE" ]; then
			echo "   machine ${idle}% idle"
			return 0
		fi
		if [ $SECONDS -ge $deadline ]; then
			echo "   WARNING: machine only ${idle}% idle after ${QUIET_WAIT}s of waiting; running anyway"
			return 0
		fi
		sleep 5
	done
}

# scenario NAME SERVER_FLAGS -- CMDLOAD_FLAGS
scenario() {
	local name=$1
	shift
	local sflags=()
	while [ "$1" != "--" ]; do sflags+=("$1"); shift; done
	shift
	echo "== $name: cmdload $*"
	wait_quiet | tee "$OUT/$name.idle-before"
	start_server "$name" ${sflags[@]+"${sflags[@]}"}
	local prof_pid=
	if [ ${#PPROF_FLAG[@]} -gt 0 ] && [[ "$*" == *"--rate 0"* ]]; then
		# Profile the server over the measured window (after the warmup).
		local warm_s=3
		[[ "$WARMUP" =~ ^[0-9]+s$ ]] && warm_s=${WARMUP%s}
		(sleep "$warm_s" && curl -fsS -o "$OUT/$name.cpu.pprof" \
			"http://127.0.0.1:$METRICS_PORT/debug/pprof/profile?seconds=$PROFILE_S") &
		prof_pid=$!
	fi
	"$WORK/cmdload" --url "http://127.0.0.1:$HTTP_PORT" --token-file "$TOKEN_FILE" --server-pid "$SERVER_PID" \
		--run-id "$name" --progress=false "$@" --json >"$OUT/$name.json"
	if [ -n "$prof_pid" ]; then wait "$prof_pid" || echo "   (cpu profile failed)"; fi
	stop_server "$name"
	if command -v jq >/dev/null; then
		jq -c '{mode, concurrency, offered_rate, ok_per_s, error_rate, statuses, p50: .latency.p50_ms, p99: .latency.p99_ms, p999: .latency["p99_9_ms"], max: .latency.max_ms, cpu}' "$OUT/$name.json"
	fi
}

ALL=(sat-c32 sat-c64 sat-c128 lat-1000 sat-mixed-c64)
want=("$@")
[ ${#want[@]} -gt 0 ] || want=("${ALL[@]}")
for s in "${want[@]}"; do
	case $s in
	sat-c[0-9]*)
		# 8 tenants x the default 2000/s limit = 16000/s: far above what one
		# 2-core machine reaches, so the limiter does not shape the result.
		scenario "$s" -- --rate 0 --concurrency "${s#sat-c}" --tenants 8 --duration "$DURATION_SAT" --warmup "$WARMUP"
		;;
	sat-mixed-c[0-9]*)
		scenario "$s" -- --rate 0 --concurrency "${s#sat-mixed-c}" --tenants 8 --mix mixed --duration "$DURATION_SAT" --warmup "$WARMUP"
		;;
	lat-*)
		scenario "$s" -- --rate "${s#lat-}" --tenants 8 --duration "$DURATION_LAT" --warmup "$WARMUP"
		;;
	*)
		echo "run.sh: unknown scenario $s (known: ${ALL[*]}, sat-c<N>, sat-mixed-c<N>, lat-<rate>)" >&2
		exit 2
		;;
	esac
done

# Markdown table of every scenario in $OUT, as pasted into bench/README.md.
if command -v jq >/dev/null; then
	echo
	echo "| scenario | mode | offered | ok/s | errors | p50 | p90 | p99 | p99.9 | max (ms) | server CPU | loadgen CPU | machine busy | server RSS |"
	echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
	for f in "$OUT"/*.json; do
		jq -r --arg n "$(basename "$f" .json)" 'def r1: (. * 10 | round) / 10; "| \($n) | \(.mode)\(if .concurrency then " c=\(.concurrency)" else "" end) | \(if .offered_rate > 0 then "\(.offered_rate)/s" else "-" end) | \(.ok_per_s | round) | \(.errors) (\(.error_rate * 100 | . * 1000 | round / 1000)%) | \(.latency.p50_ms | r1) | \(.latency.p90_ms | r1) | \(.latency.p99_ms | r1) | \(.latency["p99_9_ms"] | r1) | \(.latency.max_ms | r1) | \(.cpu.server_pct | r1)% | \(.cpu.load_generator_pct | r1)% | \(.cpu.machine_busy_pct | r1)% | \(.cpu.server_rss_mib | round) MiB |"' "$f"
	done
fi
