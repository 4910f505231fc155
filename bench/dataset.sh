# Shared by the benchmark scripts (sourced, from the repository root): starts the kept
# PostgreSQL cluster holding the data set, building it on first use, and defines WORK (a
# temporary directory removed on exit), OPS (the release build, built first), URL, the PG*
# variables, and time_it.
#
# Data sets, chosen by DATASET (each a database in the kept cluster, built on first use):
#   standard (default, database `bench`): pgbench scale 50 plus a 3-million-row table of md5
#     text, bigint and timestamps (pgbench's own rows are mostly blank padding and compress
#     unrealistically well), ≈1.1 GB;
#   wide (`bench_wide`): a differently shaped ≈1 GB — 300,000 wide rows of text and jsonb,
#     2,000 documents of 192 KB each (stored out of line, in TOAST), and 500 small tables;
#   large (`bench_large`): the standard shape at five times the size (pgbench scale 250
#     plus 15 million rows), ≈5.4 GB, for memory and throughput at scale.
# DB is the chosen database's name. FSYNC=on starts the cluster durable (fsync and
# synchronous commits as PostgreSQL's defaults) instead of with fsync off.

BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
# What every benchmark measures: the release build of this checkout.
cargo build --release --quiet
OPS=$PWD/target/release/opsrunner

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
as_pg "$BIN/pg_ctl" -D "$DATA/data" -l "$DATA/server.log" -w -o "-p $PORT -k $SOCK -c listen_addresses='' -c fsync=${FSYNC:-off} -c max_wal_size=4GB" start >/dev/null
cleanup() { as_pg "$BIN/pg_ctl" -D "$DATA/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT
export PGHOST=$SOCK PGPORT=$PORT PGUSER=postgres PGOPTIONS="-c client_min_messages=warning"
case ${DATASET:=standard} in
  standard) DB=bench ;;
  wide) DB=bench_wide ;;
  large) DB=bench_large ;;
  *) echo "DATASET is standard, wide or large" >&2; exit 2 ;;
esac
URL="postgres://postgres@localhost:$PORT/$DB?host=$SOCK"

standard_shape() { # SCALE ROWS
  "$BIN/pgbench" -q -i -s "$1" "$DB" >/dev/null 2>&1
  "$BIN/psql" -X -q "$DB" -c "create table events (id bigint primary key, payload text, n bigint, at timestamptz);
    insert into events select g, md5(g::text), g::bigint * 7919, now() - g * interval '1 second' from generate_series(1, $2) g;"
}

wide_shape() {
  "$BIN/psql" -X -q "$DB" \
    -c "create table wide (id bigint primary key, a text, b text, c jsonb);
        insert into wide select g, repeat(md5(g::text), 30), md5((g * 3)::text) || ' ' || repeat('lorem ipsum dolor ', 25),
          jsonb_build_object('k', g, 'v', md5(g::text), 'tags', jsonb_build_array('a', 'b', g % 17)) from generate_series(1, 300000) g;" \
    -c "create table documents (id int primary key, body text);
        alter table documents alter column body set storage external;
        insert into documents select g, (select string_agg(md5((g * 10000 + i)::text), '') from generate_series(1, 6000) i) from generate_series(1, 2000) g;" \
    -c "do \$\$ begin for i in 1..500 loop
          execute format('create table small_%s (id int primary key, name text, at timestamptz default now())', i);
          execute format('insert into small_%s select g, md5(g::text) from generate_series(1, 200) g', i);
        end loop; end \$\$;"
}

if [ "$FRESH" = 1 ] || ! "$BIN/psql" -X -At -c "select 1 from pg_database where datname = '$DB'" postgres | grep -q 1; then
  echo "building the data set $DATASET…" >&2
  "$BIN/psql" -X -q -c "drop database if exists $DB" -c "create database $DB" postgres
  case $DATASET in
    standard) standard_shape 50 3000000 ;;
    wide) wide_shape ;;
    large) standard_shape 250 15000000 ;;
  esac
  "$BIN/psql" -X -q "$DB" -c "vacuum analyze"
fi
SIZE=$("$BIN/psql" -X -At "$DB" -c "select pg_size_pretty(pg_database_size('$DB'))")
echo "data set $DATASET: $SIZE" >&2

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


# local_plans [EXTRA] : writes $WORK/backup.yaml, a backup with the defaults (and EXTRA
# parameters, e.g. ", fingerprint: none") of the data set into the local repository
# $WORK/repo. restore_plan ID [DATABASE [EXTRA [FILE]]] : writes FILE (default
# $WORK/restore.yaml), a restore of backup ID into DATABASE (default r_ops) with EXTRA
# parameters (default ", jobs: 2").
local_plans() {
  mkdir -p "$WORK/repo"
  cat > "$WORK/backup.yaml" <<YAML
version: 1
name: bench-backup
targets:
  db: { url: "$URL" }
repositories:
  repo: { url: "file://$WORK/repo", create: true }
steps:
  - { id: backup, type: backup, target: db, repository: repo${1:-} }
YAML
}
restore_plan() {
  cat > "${4:-$WORK/restore.yaml}" <<YAML
version: 1
name: bench-restore
targets:
  db: { url: "$URL" }
repositories:
  repo: { url: "file://$WORK/repo", create: true }
steps:
  - { id: restore, type: restore, repository: repo, backup: $1, into: { target: db, database: ${2:-r_ops} }${3-, jobs: 2} }
YAML
}

# Alternating rounds (throughput.sh, restore_paths.sh): `measure NAME COMMAND…` appends
# NAME's wall, user and system seconds and peak RSS (KiB) to $WORK/times (after running
# $PREP, if set); `median NAME FIELD` (2 wall, 3 user, 4 sys) and `peak NAME` (MiB) read
# them back. `first_backup` dumps the data set uncompressed to $WORK/plain.dump, backs it
# up with the defaults into $WORK/repo and sets ID to that backup's id.
: > "$WORK/times"
measure() {
  local name=$1; shift
  ${PREP:-true}
  /usr/bin/time -f "$name %e %U %S %M" -o "$WORK/t" "$@" >"$WORK/out" 2>&1 || { cat "$WORK/out" >&2; exit 1; }
  cat "$WORK/t" >> "$WORK/times"
}
median() {
  awk -v n="$1" -v f="$2" '$1 == n { print $f }' "$WORK/times" | sort -g |
    awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
peak() { awk -v n="$1" '$1 == n && $5 > m { m = $5 } END { printf "%.0f", m / 1024 }' "$WORK/times"; }
first_backup() {
  local_plans
  "$BIN/pg_dump" -Fc -Z0 --no-sync -f "$WORK/plain.dump" "$DB"
  "$OPS" apply "$WORK/backup.yaml" >/dev/null 2>&1
  ID=$(basename "$(dirname "$(ls "$WORK"/repo/*/dump.pgdump.zst | head -n 1)")")
}
