#!/usr/bin/env bash
# up.sh brings up the local stores CompanyOS needs, on loopback only, without a
# service manager (containers and CI have none):
#
#   Postgres   127.0.0.1:5432  role/database companyos (password companyos)
#   ClickHouse 127.0.0.1:9000  (native), 8123 (HTTP); database companyos,
#              user default with no password
#
# It installs missing Debian packages (postgresql, clickhouse-server,
# clickhouse-client, kcat), starts whatever is not running, waits until both
# answer, and creates the role and databases. It is idempotent: run it as often
# as you like; a warm run only checks.
#
# Environment (all optional):
#   COMPANYOS_UP_TIMEOUT  seconds to wait for each server to answer (default 90)
set -euo pipefail

TIMEOUT="${COMPANYOS_UP_TIMEOUT:-90}"
PG_PORT=5432
CH_HOST=127.0.0.1
CH_PORT=9000
CH_BIN=/usr/sbin/clickhouse-server
CH_CONFIG=/etc/clickhouse-server/config.xml
CH_LOG_DIR=/var/log/clickhouse-server
CH_RUN_DIR=/run/clickhouse-server
CH_PIDFILE="$CH_RUN_DIR/clickhouse-server.pid"

started_at=$(date +%s)
say() { printf 'up: %s\n' "$*"; }
die() { printf 'up: ERROR: %s\n' "$*" >&2; exit 1; }

is_root() { [ "$(id -u)" -eq 0 ]; }

# One up/down at a time: concurrent runs (parallel test jobs, several shells)
# would otherwise race to start the same servers. Every command that may leave
# a server running gets "9>&-" so the server does not inherit the lock.
lockfile=/run/lock/companyos-local-stores.lock
if ! { : >>"$lockfile"; } 2>/dev/null; then
	lockfile="${TMPDIR:-/tmp}/companyos-local-stores.$(id -u).lock"
fi
exec 9>>"$lockfile"
[ "$(id -u)" -ne 0 ] || chmod 0666 "$lockfile" 2>/dev/null || true
if ! flock -w 300 9; then
	printf '%s: ERROR: another deploy/local script held %s for 300s\n' "up" "$lockfile" >&2
	exit 1
fi

# as_user USER CMD... runs CMD as USER: directly if we already are USER, via
# runuser when root, via passwordless sudo otherwise.
as_user() {
	local user=$1
	shift
	if [ "$(id -un)" = "$user" ]; then
		"$@"
	elif is_root; then
		runuser -u "$user" -- "$@"
	elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
		sudo -n -u "$user" -- "$@"
	else
		die "need to run '$*' as user $user: re-run this script as root (sudo bash $0)"
	fi
}

# as_root CMD... runs CMD as root (directly, or via passwordless sudo).
as_root() {
	if is_root; then
		"$@"
	elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
		sudo -n -- "$@"
	else
		die "need root for '$*': re-run this script as root (sudo bash $0)"
	fi
}

# ---------------------------------------------------------------- packages --

pg_version() {
	# Highest installed server major version, e.g. 15.
	local d v best=""
	for d in /usr/lib/postgresql/*/bin/postgres; do
		[ -x "$d" ] || continue
		v=${d#/usr/lib/postgresql/}
		v=${v%%/*}
		if [ -z "$best" ] || [ "$v" -gt "$best" ] 2>/dev/null; then best=$v; fi
	done
	printf '%s' "$best"
}

missing=()
if [ -z "$(pg_version)" ] || ! command -v pg_ctlcluster >/dev/null || ! command -v psql >/dev/null; then
	missing+=(postgresql)
fi
[ -x "$CH_BIN" ] || missing+=(clickhouse-server)
command -v clickhouse-client >/dev/null || missing+=(clickhouse-client)
command -v kcat >/dev/null || missing+=(kcat)

if [ "${#missing[@]}" -gt 0 ]; then
	if ! is_root && ! { command -v sudo >/dev/null && sudo -n true 2>/dev/null; }; then
		cat >&2 <<EOF
up: ERROR: missing packages: ${missing[*]}
up: install them as root, then run this script again:
    sudo apt-get update
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y ${missing[*]}
    bash $0
EOF
		exit 1
	fi
	say "installing ${missing[*]} (apt-get update + install)"
	apt_log=$(mktemp)
	if ! as_root apt-get update -q >"$apt_log" 2>&1 ||
		! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >>"$apt_log" 2>&1 9>&-; then
		tail -n 30 "$apt_log" >&2
		die "apt-get failed installing ${missing[*]}; output above (full log: $apt_log)"
	fi
	rm -f "$apt_log"
	say "installed ${missing[*]}"
else
	say "packages present (postgresql, clickhouse-server, clickhouse-client, kcat)"
fi

# ---------------------------------------------------------------- postgres --

PG_VER=$(pg_version)
[ -n "$PG_VER" ] || die "no PostgreSQL server found under /usr/lib/postgresql after install"

if ! pg_lsclusters -h 2>/dev/null | awk -v v="$PG_VER" '$1 == v && $2 == "main" { found = 1 } END { exit !found }'; then
	say "postgres: creating cluster $PG_VER/main"
	as_root pg_createcluster "$PG_VER" main >/dev/null 9>&-
fi

# Listen on loopback, port 5432. Only touch the config when it differs, so a
# warm run changes nothing.
pg_changed=0
cur_port=$(pg_conftool -s "$PG_VER" main show port 2>/dev/null || echo 5432)
cur_listen=$(pg_conftool -s "$PG_VER" main show listen_addresses 2>/dev/null || echo localhost)
cur_listen=${cur_listen//\'/}
if [ "$cur_port" != "$PG_PORT" ]; then
	say "postgres: setting port $PG_PORT (was $cur_port)"
	as_root pg_conftool "$PG_VER" main set port "$PG_PORT"
	pg_changed=1
fi
case "$cur_listen" in
localhost | 127.0.0.1 | "localhost,127.0.0.1" | "127.0.0.1,::1" | "localhost,::1") ;;
*)
	say "postgres: setting listen_addresses to localhost (was '$cur_listen')"
	as_root pg_conftool "$PG_VER" main set listen_addresses localhost
	pg_changed=1
	;;
esac

# pg_lsclusters works for any user; "pg_ctlcluster status" needs to read the
# data directory, which only root and postgres can.
pg_running() {
	pg_lsclusters -h 2>/dev/null | awk -v v="$PG_VER" '$1 == v && $2 == "main" && $4 ~ /^online/ { up = 1 } END { exit !up }'
}
if pg_running; then
	if [ "$pg_changed" -eq 1 ]; then
		say "postgres $PG_VER: restarting to apply config"
		as_root pg_ctlcluster "$PG_VER" main restart 9>&-
	else
		say "postgres $PG_VER: already running"
	fi
else
	say "postgres $PG_VER: starting (pg_ctlcluster $PG_VER main start)"
	if ! as_root pg_ctlcluster "$PG_VER" main start 9>&-; then
		tail -n 30 "/var/log/postgresql/postgresql-$PG_VER-main.log" >&2 || true
		die "postgres $PG_VER failed to start; log tail above"
	fi
fi

deadline=$(($(date +%s) + TIMEOUT))
until pg_isready -q -h 127.0.0.1 -p "$PG_PORT"; do
	if [ "$(date +%s)" -ge "$deadline" ]; then
		tail -n 30 "/var/log/postgresql/postgresql-$PG_VER-main.log" >&2 || true
		die "postgres not accepting connections on 127.0.0.1:$PG_PORT after ${TIMEOUT}s; log tail above"
	fi
	sleep 0.3
done
say "postgres: ready on 127.0.0.1:$PG_PORT"

# Role and database. The ALTER keeps the password right if someone changed it.
# psql runs from / so it does not complain about an unreadable cwd.
(cd / && as_user postgres psql -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" -d postgres) <<'SQL'
SET client_min_messages = warning;
DO $$
BEGIN
	IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'companyos') THEN
		CREATE ROLE companyos LOGIN CREATEDB PASSWORD 'companyos';
	ELSE
		ALTER ROLE companyos LOGIN CREATEDB PASSWORD 'companyos';
	END IF;
END
$$;
SELECT 'CREATE DATABASE companyos OWNER companyos'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'companyos')
\gexec
SQL
say "postgres: role and database companyos ok"

# -------------------------------------------------------------- clickhouse --

ch() { clickhouse-client --host "$CH_HOST" --port "$CH_PORT" "$@"; }
ch_ready() { ch --query 'SELECT 1' >/dev/null 2>&1; }

# ch_pid prints the pid of the live clickhouse-server from the pid file. A
# zombie does not count: the daemon is re-parented to PID 1, which in some
# containers reaps late, so a killed server can linger as one.
ch_pid() {
	local pid state comm
	[ -r "$CH_PIDFILE" ] || return 1
	pid=$(tr -dc '0-9' <"$CH_PIDFILE")
	[ -n "$pid" ] || return 1
	state=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1) || return 1
	comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
	case "$state:$comm" in
	Z:* | X:* | :*) return 1 ;;
	*:clickhouse*) printf '%s' "$pid" ;;
	*) return 1 ;;
	esac
}

ch_log_tail() {
	local f
	for f in "$CH_LOG_DIR/stderr.log" "$CH_LOG_DIR/clickhouse-server.err.log" "$CH_LOG_DIR/clickhouse-server.log"; do
		if [ -s "$f" ]; then
			printf -- '--- tail of %s ---\n' "$f" >&2
			tail -n 25 "$f" >&2
		fi
	done
}

# Pin the listen address to loopback explicitly (the packaged config only
# defaults to it), and don't fail where IPv6 is off.
CH_LISTEN_CONF=/etc/clickhouse-server/config.d/companyos-listen.xml
CH_LISTEN_WANT='<?xml version="1.0"?>
<!-- Written by companyos deploy/local/up.sh: loopback only. -->
<yandex>
    <listen_host>127.0.0.1</listen_host>
    <listen_host>::1</listen_host>
    <listen_try>1</listen_try>
</yandex>'
if [ "$(cat "$CH_LISTEN_CONF" 2>/dev/null || true)" != "$CH_LISTEN_WANT" ]; then
	say "clickhouse: writing $CH_LISTEN_CONF (listen on loopback)"
	as_root install -d -m 0755 /etc/clickhouse-server/config.d
	printf '%s\n' "$CH_LISTEN_WANT" | as_root tee "$CH_LISTEN_CONF" >/dev/null
fi

if ch_ready; then
	say "clickhouse: already running"
else
	launch_log=""
	if pid=$(ch_pid); then
		say "clickhouse: process $pid exists, waiting for it to answer"
	else
		say "clickhouse: starting $CH_BIN as user clickhouse"
		as_root install -d -o clickhouse -g clickhouse /var/lib/clickhouse "$CH_LOG_DIR" "$CH_RUN_DIR"
		# With --daemon the server forks and opens its own stdout.log and
		# stderr.log in $CH_LOG_DIR as user clickhouse, so we must not create
		# those files ourselves (a root-owned stdout.log makes it exit at
		# once). What it prints before that goes to a scratch file.
		launch_log=$(mktemp)
		(cd / && as_user clickhouse "$CH_BIN" --config-file="$CH_CONFIG" \
			--daemon --pid-file="$CH_PIDFILE" \
			</dev/null >"$launch_log" 2>&1 9>&-) ||
			{ cat "$launch_log" >&2; ch_log_tail; die "clickhouse-server failed to start; output above"; }
	fi
	start_wait=$(date +%s)
	deadline=$((start_wait + TIMEOUT))
	until ch_ready; do
		now=$(date +%s)
		# Give the daemon a few seconds to write its pid file; after that a
		# missing process means it died, and waiting longer is pointless.
		if [ "$now" -ge "$deadline" ] || { [ "$now" -ge $((start_wait + 5)) ] && ! ch_pid >/dev/null; }; then
			if [ -n "$launch_log" ]; then cat "$launch_log" >&2; fi
			ch_log_tail
			if ch_pid >/dev/null; then
				die "clickhouse not answering on $CH_HOST:$CH_PORT after ${TIMEOUT}s (clickhouse-client --query 'SELECT 1'); log tail above"
			fi
			die "clickhouse-server exited during startup (no live process in $CH_PIDFILE); log tail above"
		fi
		sleep 0.3
	done
	if [ -n "$launch_log" ]; then rm -f "$launch_log"; fi
fi
say "clickhouse: ready on $CH_HOST:$CH_PORT ($(ch --query 'SELECT version()'))"

ch --query 'CREATE DATABASE IF NOT EXISTS companyos'
say "clickhouse: database companyos ok"

say "done in $(($(date +%s) - started_at))s"
