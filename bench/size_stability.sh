#!/usr/bin/env bash
# Compressed size against timing (issue 14, point 2): the same unchanged database backed up
# by `opsrunner apply` (one `backup` step: custom format, zstd level 3, all cores) ROUNDS
# times idle and ROUNDS times with both cores busy (`yes > /dev/null` per core), against
# `pg_dump -Fc -Z0 | zstd -q -3 -T0` of the same database. The sizes should not move with
# the load and should not exceed zstd's.
#
#   ROUNDS=3 bench/size_stability.sh     # needs: cargo, PostgreSQL server binaries, zstd
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
cargo build --release --quiet --bin opsrunner
OPS=$PWD/target/release/opsrunner
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
WORK=$(mktemp -d /tmp/opsrunner-sizebench.XXXXXX)
chmod 755 "$WORK"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
mkdir -p "$WORK/sock" "$WORK/repo"
[ "$(id -u)" = 0 ] && chown postgres "$WORK/sock"
as_pg "$BIN/initdb" -D "$WORK/sock/data" -U postgres -A trust -N >/dev/null
as_pg "$BIN/pg_ctl" -D "$WORK/sock/data" -l "$WORK/sock/log" -w -o "-p 5487 -k $WORK/sock -c listen_addresses='' -c fsync=off" start >/dev/null
LOAD=()
cleanup() {
  kill "${LOAD[@]}" 2>/dev/null || true
  as_pg "$BIN/pg_ctl" -D "$WORK/sock/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
export PGHOST=$WORK/sock PGPORT=5487 PGUSER=postgres
"$BIN/psql" -Xq -c "create database app" postgres
"$BIN/pgbench" -q -i -s 5 app >/dev/null 2>&1
"$BIN/psql" -Xq app -c "create table docs as select g id, md5(g::text) a, repeat(md5((g % 100)::text), 20) b from generate_series(1, 200000) g"
cat >"$WORK/plan.yaml" <<YAML
version: 1
name: size
targets:
  db: { url: "postgres://postgres@localhost:5487/app?host=$WORK/sock" }
repositories:
  repo: { url: "file://$WORK/repo", create: true }
steps:
  - { id: backup, type: backup, target: db, repository: repo }
YAML
newest() { stat -c %s "$(ls -t "$WORK"/repo/*/dump.pgdump.zst | head -n 1)"; }
idle=() busy=()
for _ in $(seq "$ROUNDS"); do
  "$OPS" apply "$WORK/plan.yaml" >/dev/null 2>&1
  idle+=("$(newest)")
  for _ in $(seq "$(nproc)"); do yes >/dev/null & LOAD+=($!); done
  "$OPS" apply "$WORK/plan.yaml" >/dev/null 2>&1
  kill "${LOAD[@]}" 2>/dev/null || true; wait "${LOAD[@]}" 2>/dev/null || true; LOAD=()
  busy+=("$(newest)")
done
zstd_size=$("$BIN/pg_dump" -Fc -Z0 app | zstd -q -3 -T0 | wc -c)
echo "database: $("$BIN/psql" -XAt -c "select pg_size_pretty(pg_database_size('app'))" postgres)"
echo "opsrunner idle:  ${idle[*]}"
echo "opsrunner busy:  ${busy[*]}"
echo "pg_dump | zstd -3 -T0: $zstd_size"
printf '%s\n' "${idle[@]}" "${busy[@]}" | awk -v z="$zstd_size" 'NR==1{min=$1;max=$1} {if($1<min)min=$1; if($1>max)max=$1} END{printf "spread %.4f %%, largest / zstd %.5f\n", (max-min)*100/min, max/z}'
