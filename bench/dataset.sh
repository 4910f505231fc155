# Shared by the benchmark scripts (sourced, from the repository root): starts the kept
# PostgreSQL cluster holding the data set, building it on first use, and defines WORK (a
# temporary directory removed on exit), URL, the PG* variables, and time_it.
#
# Data set: pgbench scale 50 plus a 3-million-row table of md5 text, bigint and timestamps
# (pgbench's own rows are mostly blank padding and compress unrealistically well), ≈1.1 GB.

BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)

WORK=$(mktemp -d /tmp/opsrunner-bench.XXXXXX)
chmod 755 "$WORK"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
# The cluster with the data set is kept between runs (building it takes minutes);
# delete $DATA to rebuild it.
DATA=${BENCH_DATA:-/var/tmp/opsrunner-bench}
SOCK=$WORK/sock
mkdir -p "$DATA" "$SOCK"
[ "$(id -u)" = 0 ] && chown postgres "$DATA" "$SOCK"
PORT=5432
FRESH=0
if [ ! -f "$DATA/data/PG_VERSION" ]; then
  as_pg "$BIN/initdb" -D "$DATA/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 -N >/dev/null
  FRESH=1
fi
as_pg "$BIN/pg_ctl" -D "$DATA/data" -l "$DATA/server.log" -w -o "-p $PORT -k $SOCK -c listen_addresses='' -c fsync=off -c max_wal_size=4GB" start >/dev/null
cleanup() { as_pg "$BIN/pg_ctl" -D "$DATA/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT
export PGHOST=$SOCK PGPORT=$PORT PGUSER=postgres PGOPTIONS="-c client_min_messages=warning"
URL="postgres://postgres@localhost:$PORT/bench?host=$SOCK"

if [ "$FRESH" = 1 ] || ! "$BIN/psql" -X -At -c "select 1 from pg_database where datname = 'bench'" postgres | grep -q 1; then
  echo "building the data set…" >&2
  "$BIN/psql" -X -q -c "drop database if exists bench" -c "create database bench" postgres
  "$BIN/pgbench" -q -i -s 50 bench >/dev/null 2>&1
  "$BIN/psql" -X -q bench -c "create table events (id bigint primary key, payload text, n bigint, at timestamptz);
    insert into events select g, md5(g::text), g::bigint * 7919, now() - g * interval '1 second' from generate_series(1, 3000000) g;" \
    -c "vacuum analyze"
fi
SIZE=$("$BIN/psql" -X -At bench -c "select pg_size_pretty(pg_database_size('bench'))")
echo "data set: $SIZE" >&2

# time_it NAME COMMAND… : wall seconds and peak RSS (KiB) of the command.
declare -A WALL RSS
time_it() {
  local name=$1; shift
  local best=""
  for _ in $(seq "$RUNS"); do
    ${PREP:-true}
    /usr/bin/time -f "%e %M" -o "$WORK/time" "$@" >/dev/null 2>"$WORK/err" || { cat "$WORK/err" >&2; exit 1; }
    read -r wall rss < "$WORK/time"
    if [ -z "$best" ] || awk "BEGIN{exit !($wall < $best)}"; then best=$wall; RSS[$name]=$rss; fi
  done
  WALL[$name]=$best
}

