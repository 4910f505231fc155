#!/usr/bin/env bash
# Backup and restore benchmark (issue 3): builds the data set, then runs the baselines and
# opsrunner side by side in one run and prints wall times, sizes, peak RSS and ratios.
#
#   bench/pg_backup.sh            # needs: cargo, PostgreSQL server binaries, zstd, GNU time
#
# Data set: pgbench scale 50 plus a 3-million-row table of md5 text, bigint and timestamps
# (pgbench's own rows are mostly blank padding and compress unrealistically well), ≈1.1 GB.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
RUNS=${RUNS:-1}
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
as_pg "$BIN/pg_ctl" -D "$DATA/data" -l "$DATA/server.log" -w -o "-p $PORT -k $SOCK -c listen_addresses='' -c fsync=off -c max_wal_size=4GB" start >/dev/null
cleanup() { as_pg "$BIN/pg_ctl" -D "$DATA/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT
export PGHOST=$SOCK PGPORT=$PORT PGUSER=postgres PGOPTIONS="-c client_min_messages=warning"
URL="postgres://postgres@localhost:$PORT/bench?host=$SOCK"
for db in r_base r_jobs r_stream; do "$BIN/psql" -X -q -c "drop database if exists $db" postgres; done

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

time_it raw "$BIN/pg_dump" -Fc -Z0 --no-sync -f /dev/null bench
time_it gzip "$BIN/pg_dump" -Fc --no-sync -f "$WORK/gzip.dump" bench
time_it pipeline bash -c "set -o pipefail; '$BIN/pg_dump' -Fc -Z0 bench | zstd -q -T2 | tee '$WORK/pipe.dump.zst' | sha256sum > '$WORK/pipe.sha'"

mkdir "$WORK/repo"
cat > "$WORK/backup.yaml" <<YAML
version: 1
name: bench-backup
targets:
  db: { url: "$URL" }
repositories:
  repo: { url: "file://$WORK/repo" }
steps:
  - { id: backup, type: backup, target: db, repository: repo${OPS_EXTRA:-} }
YAML
time_it opsrunner "$OPS" apply "$WORK/backup.yaml" --report "$WORK/backup.json"
OPS_FILE=$(ls "$WORK"/repo/*/dump.pgdump.zst | tail -n 1)
ID=$(basename "$(dirname "$OPS_FILE")")

if [ "${ONLY:-}" = backup ]; then
  echo "opsrunner ${WALL[opsrunner]} s (size $(stat -c %s "$OPS_FILE")), raw ${WALL[raw]} s, pipeline ${WALL[pipeline]} s, gzip ${WALL[gzip]} s"
  exit 0
fi

# Restore: pg_restore -j 2 of an uncompressed custom dump, against opsrunner's restore of
# its own (zstd) backup with jobs 2 and streaming (no jobs).
"$BIN/pg_dump" -Fc -Z0 --no-sync -f "$WORK/plain.dump" bench
# Each restore run starts from an empty database.
fresh_dbs() { for db in r_base r_jobs r_stream; do "$BIN/psql" -X -q -c "drop database if exists $db" postgres; done; "$BIN/psql" -X -q -c "create database r_base" postgres; }
PREP=fresh_dbs time_it restore_base "$BIN/pg_restore" -j 2 --exit-on-error -d r_base "$WORK/plain.dump"
for mode in jobs stream; do
  extra=""; [ $mode = jobs ] && extra=", jobs: 2"
  cat > "$WORK/restore-$mode.yaml" <<YAML
version: 1
name: bench-restore
targets:
  db: { url: "$URL" }
repositories:
  repo: { url: "file://$WORK/repo" }
steps:
  - { id: restore, type: restore, repository: repo, backup: $ID, into: { target: db, database: r_$mode }$extra }
YAML
  PREP=fresh_dbs time_it "restore_$mode" "$OPS" apply "$WORK/restore-$mode.yaml"
done

size() { stat -c %s "$1"; }
mib() { awk "BEGIN{printf \"%.0f\", $1/1048576}"; }
ratio() { awk "BEGIN{printf \"%.2f\", ${WALL[$1]}/${WALL[$2]}}"; }
cat <<REPORT
data set: $SIZE (pgbench scale 50 + events 3M rows), $(nproc) cores, runs per figure: $RUNS (best)

| what | wall s | size MiB | peak RSS MiB |
|---|---|---|---|
| raw \`pg_dump -Fc -Z0 --no-sync -f /dev/null\` | ${WALL[raw]} | – | $(mib $((RSS[raw]*1024))) |
| \`pg_dump -Fc\` (built-in gzip) | ${WALL[gzip]} | $(mib "$(size "$WORK/gzip.dump")") | $(mib $((RSS[gzip]*1024))) |
| \`pg_dump -Fc -Z0 \\| zstd -T2 \\| tee … \\| sha256sum\` | ${WALL[pipeline]} | $(mib "$(size "$WORK/pipe.dump.zst")") | – |
| **opsrunner backup** (custom, zstd, SHA-256, counts) | ${WALL[opsrunner]} | $(mib "$(size "$OPS_FILE")") | $(mib $((RSS[opsrunner]*1024))) |
| \`pg_restore -j 2\` of an uncompressed dump | ${WALL[restore_base]} | – | – |
| **opsrunner restore**, jobs 2 (two streamed data loaders, post-data -j 2) | ${WALL[restore_jobs]} | – | $(mib $((RSS[restore_jobs]*1024))) |
| **opsrunner restore**, streamed into pg_restore | ${WALL[restore_stream]} | – | $(mib $((RSS[restore_stream]*1024))) |

ratios: backup/raw $(ratio opsrunner raw) (goal ≤ 1.5), backup/pipeline $(ratio opsrunner pipeline) (goal ≤ 1.0),
backup/pg_dump -Fc $(ratio opsrunner gzip) (goal ≤ 0.4), restore(jobs 2)/pg_restore -j 2 $(ratio restore_jobs restore_base),
restore(streamed)/pg_restore -j 2 $(ratio restore_stream restore_base) (goal ≤ 1.2)
REPORT
