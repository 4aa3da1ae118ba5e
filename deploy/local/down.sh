#!/usr/bin/env bash
# down.sh stops the local Postgres and ClickHouse that up.sh started. Data is
# kept; run up.sh to start them again. Safe to run when nothing is running.
set -euo pipefail

CH_BIN=/usr/sbin/clickhouse-server
CH_PIDFILE=/run/clickhouse-server/clickhouse-server.pid

say() { printf 'down: %s\n' "$*"; }

# One up/down at a time, shared with up.sh.
lockfile=/run/lock/companyos-local-stores.lock
if ! { : >>"$lockfile"; } 2>/dev/null; then
	lockfile="${TMPDIR:-/tmp}/companyos-local-stores.$(id -u).lock"
fi
exec 9>>"$lockfile"
[ "$(id -u)" -ne 0 ] || chmod 0666 "$lockfile" 2>/dev/null || true
if ! flock -w 300 9; then
	printf '%s: ERROR: another deploy/local script held %s for 300s\n' "down" "$lockfile" >&2
	exit 1
fi

as_root() {
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
		sudo -n -- "$@"
	else
		printf 'down: ERROR: need root for %s: re-run as root (sudo bash %s)\n' "$*" >&2
		exit 1
	fi
}

# Postgres: every "main" cluster that is up (normally just one version).
if command -v pg_lsclusters >/dev/null; then
	while read -r ver name _port status _rest; do
		[ "$name" = main ] || continue
		case "$status" in
		online*)
			say "postgres $ver: stopping"
			as_root pg_ctlcluster "$ver" main stop
			;;
		*) say "postgres $ver: not running" ;;
		esac
	done < <(pg_lsclusters -h 2>/dev/null || true)
fi

# ClickHouse: the process up.sh started is in the pid file. A server started
# some other way (e.g. the package's init script) is stopped by its exact
# executable path and user.
# alive PID: the process exists and is not a zombie (PID 1 in some containers
# reaps late) and is a clickhouse process (the pid may have been reused).
alive() {
	local state comm
	state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
	comm=$(cat "/proc/$1/comm" 2>/dev/null) || return 1
	case "$state:$comm" in
	Z:* | X:* | :*) return 1 ;;
	*:clickhouse*) return 0 ;;
	*) return 1 ;;
	esac
}

pid=""
if [ -r "$CH_PIDFILE" ]; then
	pid=$(tr -dc '0-9' <"$CH_PIDFILE")
fi
if [ -n "$pid" ] && alive "$pid"; then
	say "clickhouse: stopping pid $pid"
	as_root kill -TERM "$pid"
	for _ in $(seq 1 300); do
		alive "$pid" || break
		sleep 0.1
	done
	if alive "$pid"; then
		say "clickhouse: pid $pid still running after 30s, sending KILL"
		as_root kill -KILL "$pid" || true
	fi
	as_root rm -f "$CH_PIDFILE"
elif [ -x "$CH_BIN" ] && command -v start-stop-daemon >/dev/null &&
	start-stop-daemon --status --user clickhouse --exec "$CH_BIN" >/dev/null 2>&1; then
	say "clickhouse: stopping (no pid file; by executable)"
	as_root start-stop-daemon --stop --quiet --retry=TERM/30/KILL/5 --user clickhouse --exec "$CH_BIN"
else
	say "clickhouse: not running"
fi
say "done"
