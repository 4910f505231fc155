#!/usr/bin/env bash
# Point-in-time recovery benchmark (issue 13): a base backup by opsrunner (pg_basebackup's
# tar, zstd, SHA-256, published once its WAL is archived) against `pg_basebackup -Ft -D -
# -X none > /dev/null` (the copy alone) and against the shell pipeline it replaces
# (`pg_basebackup … | zstd -T0 -3 | tee FILE | sha256sum`), alternating within each round;
# then a point-in-time restore (to the end of the archive, in a throwaway cluster) and its
# time against the base backup's size. Two shapes of data, each in its own cluster that
# archives through `opsrunner wal push`:
#   narrow: pgbench scale 20 plus 1,000,000 rows of md5 text, bigint and timestamp;
#   wide:   800 tables of 200 small rows, plus 3,000 rows of 64 KiB text (TOASTed,
#           half of it incompressible hex).
# Medians of RUNS rounds. Release build.
#
#   RUNS=5 bench/pitr.sh      # needs: cargo, PostgreSQL server binaries, zstd
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-5}
cargo build --release --quiet --bin opsrunner
OPS=$PWD/target/release/opsrunner
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
WORK=$(mktemp -d /tmp/opsrunner-pitrbench.XXXXXX)
chmod 755 "$WORK"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
CLUSTERS=()
cleanup() {
  for c in "${CLUSTERS[@]}"; do as_pg "$BIN/pg_ctl" -D "$c" -m immediate stop >/dev/null 2>&1 || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
median() { sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
seconds() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>"$WORK/err" || { cat "$WORK/err" >&2; exit 1; }; e=$(date +%s.%N); awk "BEGIN{print $e - $s}"; }

start_cluster() { # SHAPE PORT
  local shape=$1 port=$2 dir=$WORK/$1
  mkdir -p "$dir/repo" "$dir/sock"
  [ "$(id -u)" = 0 ] && chown -R postgres "$dir"
  as_pg "$BIN/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 -N >/dev/null
  as_pg "$BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -o "-p $port -k $dir/sock -c listen_addresses='' -c fsync=off -c max_wal_size=2GB -c archive_mode=on -c archive_command='$OPS wal push %p --repository file://$dir/repo'" start >/dev/null
  CLUSTERS+=("$dir/data")
}

load() { # SHAPE
  local shape=$1 dir=$WORK/$1
  export PGHOST=$dir/sock PGPORT=$2 PGUSER=postgres PGOPTIONS="-c client_min_messages=warning"
  "$BIN/psql" -X -q -c "create database app" postgres
  if [ "$shape" = narrow ]; then
    "$BIN/pgbench" -q -i -s 20 app >/dev/null 2>&1
    "$BIN/psql" -X -q app -c "create table events (id bigint primary key, payload text, n bigint, at timestamptz);
      insert into events select g, md5(g::text), g::bigint * 7919, now() - g * interval '1 second' from generate_series(1, 1000000) g;"
  else
    "$BIN/psql" -X -q app -c "do \$\$ begin for i in 1..800 loop
        execute format('create table small_%s (id int primary key, name text, v numeric)', i);
        execute format('insert into small_%s select g, md5(g::text), g * 1.5 from generate_series(1, 200) g', i);
      end loop; end \$\$;" \
      -c "create table docs (id int primary key, body text);
      insert into docs select g, repeat(md5(g::text), 1024) || (select string_agg(md5(random()::text), '') from generate_series(1, 1024)) from generate_series(1, 3000) g;"
  fi
  "$BIN/psql" -X -q app -c "checkpoint" -c "select pg_switch_wal()" >/dev/null
}

printf '| data | database | pg_basebackup > /dev/null | shell pipeline (zstd -T0 -3, sha256sum) | opsrunner base_backup | ÷ /dev/null | ÷ pipeline | stored (pipeline / opsrunner) | PITR restore (to latest) | restore MB/s of stored |\n|---|---|---|---|---|---|---|---|---|---|\n'
port=5491
for shape in narrow wide; do
  port=$((port + 1))
  start_cluster "$shape" "$port"
  load "$shape" "$port"
  dir=$WORK/$shape
  size=$("$BIN/psql" -X -At -c "select pg_size_pretty(sum(pg_database_size(datname))) from pg_database" postgres)
  cat >"$dir/base.yaml" <<YAML
version: 1
name: bench-base
targets:
  db: { url: "postgres://postgres@localhost:$port/postgres?host=$dir/sock" }
repositories:
  repo: { url: "file://$dir/repo", create: true }
steps:
  - { id: base, type: base_backup, target: db, repository: repo }
YAML
  cat >"$dir/restore.yaml" <<YAML
version: 1
name: bench-pitr
targets:
  drill: { ephemeral: true }
repositories:
  repo: { url: "file://$dir/repo", create: true }
steps:
  - { id: restore, type: restore, repository: repo, to: { latest: true }, into: { target: drill } }
YAML
  declare -A T=()
  for round in $(seq "$RUNS"); do
    T[raw]+="$(seconds bash -c "'$BIN/pg_basebackup' -Ft -D - -X none --checkpoint=fast > /dev/null") "
    T[pipe]+="$(seconds bash -c "set -o pipefail; '$BIN/pg_basebackup' -Ft -D - -X none --checkpoint=fast | zstd -q -T0 -3 | tee '$dir/pipe.tar.zst' | sha256sum > '$dir/pipe.sha'") "
    T[ops]+="$(seconds "$OPS" apply "$dir/base.yaml") "
  done
  for round in $(seq "$RUNS"); do
    T[pitr]+="$(seconds "$OPS" apply "$dir/restore.yaml") "
  done
  raw=$(echo "${T[raw]}" | tr ' ' '\n' | grep . | median)
  pipe=$(echo "${T[pipe]}" | tr ' ' '\n' | grep . | median)
  ops=$(echo "${T[ops]}" | tr ' ' '\n' | grep . | median)
  pitr=$(echo "${T[pitr]}" | tr ' ' '\n' | grep . | median)
  pipe_size=$(stat -c %s "$dir/pipe.tar.zst")
  ops_size=$(stat -c %s "$(ls -t "$dir"/repo/*/base.tar.zst | head -n 1)")
  awk -v shape="$shape" -v size="$size" -v r="$raw" -v p="$pipe" -v o="$ops" -v t="$pitr" -v ps="$pipe_size" -v os="$ops_size" 'BEGIN{
    printf "| %s | %s | %.2f s | %.2f s | %.2f s | %.2f× | %.2f× | %.1f / %.1f MB | %.2f s | %.0f |\n",
      shape, size, r, p, o, o/r, o/p, ps/1e6, os/1e6, t, os/1e6/t }'
done
