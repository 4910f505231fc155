#!/usr/bin/env bash
# Incremental base backups and delta restores (issue 32) side by side with pgBackRest
# (Debian's package, installed here when missing), in the same run, on two shapes of data:
#   narrow: pgbench scale SCALE (default 40) plus 1,000,000 rows of md5 text;
#   wide:   2,000 tables of 200 small rows, plus 3,000 rows of 64 KiB text (TOASTed).
# Both tools run as the server's user with zstd level 3 and two processes (opsrunner's
# file-level copy: `jobs: 2`; pgBackRest: process-max=2), each archiving the same WAL
# (archive_command runs both). Per shape:
#   1. full backups, RUNS of each, alternating (medians);
#   2. change (a), a new table of ~5 % of the data: an incremental of each;
#   3. change (b), random updates touching ~1 % of the largest table's pages: another;
#   4. a differential of each (against the full: both changes);
#   5. restores of the newest (the whole chain) into an empty directory, RUNS each;
#   6. delta restores: a directory restored from the backup before a change, rewritten
#      to the backup after it (pgBackRest --delta), after (a) and after (b).
# Stored bytes are `du -sb` of each backup's directory in its repository; peak memory is
# the maximum resident size (`/usr/bin/time`) of opsrunner's full backups, per shape.
#
#   RUNS=3 bench/incremental.sh     # needs: cargo, PostgreSQL 15 server binaries, pgbench
#   SHAPES=wide RUNS=3 bench/incremental.sh   # one shape only
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
SCALE=${SCALE:-40}
command -v pgbackrest >/dev/null || apt-get install -y -q pgbackrest >/dev/null
cargo build --release --quiet --bin opsrunner
OPS=$PWD/target/release/opsrunner
BIN=/usr/lib/postgresql/15/bin
WORK=$(mktemp -d /tmp/opsrunner-incrbench.XXXXXX)
chmod 755 "$WORK"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
CLUSTERS=()
cleanup() {
  for c in "${CLUSTERS[@]}"; do as_pg "$BIN/pg_ctl" -D "$c" -m immediate stop >/dev/null 2>&1 || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
median() { sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
# Seconds a command takes, run as the server's user; its output goes to $WORK/out.
seconds() {
  local s e
  s=$(date +%s.%N)
  as_pg "$@" >"$WORK/out" 2>&1 || { cat "$WORK/out" >&2; exit 1; }
  e=$(date +%s.%N)
  awk "BEGIN{print $e - $s}"
}
mb() { awk -v b="$1" 'BEGIN{printf "%.1f", b/1e6}'; }

start_cluster() { # SHAPE PORT
  local dir=$WORK/$1 port=$2
  mkdir -p "$dir/ops" "$dir/pgbr" "$dir/sock" "$dir/log" "$dir/lock" "$dir/spool"
  cat >"$dir/pgbackrest.conf" <<CONF
[global]
repo1-path=$dir/pgbr
compress-type=zst
compress-level=3
process-max=2
start-fast=y
log-path=$dir/log
lock-path=$dir/lock
spool-path=$dir/spool
log-level-console=warn
repo1-retention-full=100

[bench]
pg1-path=$dir/data
pg1-port=$port
pg1-socket-path=$dir/sock
CONF
  [ "$(id -u)" = 0 ] && chown -R postgres "$dir"
  as_pg "$BIN/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 -N >/dev/null
  local archive="$OPS wal push %p --repository file://$dir/ops && pgbackrest --config=$dir/pgbackrest.conf --stanza=bench archive-push %p"
  as_pg "$BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -o "-p $port -k $dir/sock -c listen_addresses='' -c fsync=off -c max_wal_size=4GB -c archive_mode=on -c \"archive_command=$archive\"" start >/dev/null
  CLUSTERS+=("$dir/data")
}

sql() { as_pg "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$PORT" -U postgres "$@"; }

load() { # SHAPE
  sql -c "create database app" postgres
  if [ "$1" = narrow ]; then
    as_pg "$BIN/pgbench" -q -i -s "$SCALE" -h "$SOCK" -p "$PORT" -U postgres app >/dev/null 2>&1
    sql app -c "create table events (id bigint primary key, payload text, n bigint, at timestamptz);
      insert into events select g, md5(g::text), g::bigint * 7919, now() - g * interval '1 second' from generate_series(1, 1000000) g;"
  else
    sql app -c "do \$\$ begin for i in 1..2000 loop
        execute format('create table small_%s (id int primary key, name text, v numeric)', i);
        execute format('insert into small_%s select g, md5(g::text), g * 1.5 from generate_series(1, 200) g', i);
      end loop; end \$\$;" \
      -c "create table docs (id int primary key, body text);
      insert into docs select g, repeat(md5(g::text), 1024) || (select string_agg(md5(random()::text), '') from generate_series(1, 1024)) from generate_series(1, 3000) g;"
  fi
  # As a table that has been read: hint bits and the visibility map set before the full.
  sql app -c "vacuum (freeze)" -c "checkpoint" -c "select pg_switch_wal()" >/dev/null
}

# Change (a): a new table of about 5 % of the database.
change_a() {
  local bytes rows
  bytes=$(sql -At -c "select pg_database_size('app')" postgres)
  rows=$((bytes / 20 / 90))
  sql app -c "create table chunk_a as select g as id, md5(g::text) as a, md5((g * 3)::text) as b from generate_series(1, $rows) g" -c "checkpoint"
}

# Change (b): random updates touching about 1 % of the largest table's pages (the
# table of change (a) left out), one row on each of pages chosen at random.
change_b() {
  local table pages column
  table=$(sql -At app -c "select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace where n.nspname = 'public' and c.relkind = 'r' and c.relname <> 'chunk_a' order by pg_relation_size(c.oid) desc limit 1")
  pages=$(sql -At app -c "select pg_relation_size('$table') / 8192")
  column=$(sql -At app -c "select attname from pg_attribute where attrelid = '$table'::regclass and attnum = 1")
  sql app -c "update $table set $column = $column where ctid = any (array(select format('(%s,1)', (random() * ($pages - 1))::int)::tid from generate_series(1, greatest($pages / 100, 1))))" -c "checkpoint"
}

newest_ops() { ls -t "$DIR/ops" | grep -v '^\.' | head -n 1; }
newest_pgbr() { ls -t "$DIR/pgbr/backup/bench" | grep -E '^[0-9]{8}-[0-9]{6}F' | head -n 1; }
ops_bytes() { du -sb "$DIR/ops/$1" | cut -f1; }
pgbr_bytes() { du -sb "$DIR/pgbr/backup/bench/$1" | cut -f1; }

ops_plan() { # KIND
  cat >"$DIR/base.yaml" <<YAML
version: 1
name: bench-base
targets:
  db: { url: "postgres://postgres@localhost:$PORT/postgres?host=$SOCK", data_directory: "$DIR/data" }
repositories:
  repo: { url: "file://$DIR/ops", create: true }
steps:
  - { id: base, type: base_backup, target: db, repository: repo, kind: $1, jobs: 2 }
YAML
}
ops_backup() { # KIND
  ops_plan "$1"
  seconds "$OPS" apply "$DIR/base.yaml"
}
pgbr_backup() { # TYPE
  seconds pgbackrest --config="$DIR/pgbackrest.conf" --stanza=bench --type="$1" backup
}
ops_restore() { # ID DIR [delta | timestamps]
  local extra=""
  [ "${3:-}" = delta ] && extra=", delta: true"
  [ "${3:-}" = timestamps ] && extra=", delta: true, delta_compare: timestamp"
  cat >"$DIR/restore.yaml" <<YAML
version: 1
name: bench-restore
repositories:
  repo: { url: "file://$DIR/ops", create: true }
steps:
  - { id: restore, type: restore, repository: repo, backup: "$1", to: { latest: true }, into: { data_directory: "$2"$extra } }
YAML
  seconds "$OPS" apply "$DIR/restore.yaml"
}
pgbr_restore() { # LABEL DIR [delta | timestamps]
  local extra=()
  [ "${3:-}" = delta ] && extra=(--delta)
  [ "${3:-}" = timestamps ] && extra=(--delta --force)
  seconds pgbackrest --config="$DIR/pgbackrest.conf" --stanza=bench --set="$1" --pg1-path="$2" "${extra[@]}" restore
}
fresh_dir() { rm -rf "$1"; mkdir -p "$1"; chmod 700 "$1"; [ "$(id -u)" = 0 ] && chown postgres "$1"; true; }

echo "pgBackRest $(pgbackrest version | awk '{print $2}'), PostgreSQL $("$BIN/postgres" --version | awk '{print $3}'), RUNS=$RUNS"
printf '\n| data | database | step | pgBackRest | opsrunner | time ÷ pgBackRest | stored: pgBackRest / opsrunner | bytes ÷ pgBackRest |\n|---|---|---|---|---|---|---|---|\n'
port=5591
for shape in ${SHAPES:-narrow wide}; do
  port=$((port + 1))
  start_cluster "$shape" "$port"
  DIR=$WORK/$shape SOCK=$WORK/$shape/sock PORT=$port
  load "$shape"
  as_pg pgbackrest --config="$DIR/pgbackrest.conf" --stanza=bench stanza-create >/dev/null
  size=$(sql -At -c "select pg_size_pretty(sum(pg_database_size(datname))) from pg_database" postgres)
  row() { # STEP PGBR_SECONDS OPS_SECONDS PGBR_BYTES OPS_BYTES
    awk -v shape="$shape" -v size="$size" -v step="$1" -v p="$2" -v o="$3" -v pb="$4" -v ob="$5" 'BEGIN{
      bytes = (pb == "" ? "" : sprintf("%.1f / %.1f MB", pb/1e6, ob/1e6));
      ratio = (pb == "" ? "" : sprintf("%.2f×", ob/pb));
      printf "| %s | %s | %s | %.2f s | %.2f s | %.2f× | %s | %s |\n", shape, size, step, p, o, o/p, bytes, ratio }'
  }
  declare -A T=()
  rss=""
  ops_plan full
  for round in $(seq "$RUNS"); do
    T[pf]+="$(pgbr_backup full) "
    T[of]+="$(seconds /usr/bin/time -f %M -o "$DIR/rss" "$OPS" apply "$DIR/base.yaml") "
    rss+="$(cat "$DIR/rss") "
  done
  full_ops=$(newest_ops); full_pgbr=$(newest_pgbr)
  row "full (median of $RUNS)" "$(echo "${T[pf]}" | tr ' ' '\n' | grep . | median)" "$(echo "${T[of]}" | tr ' ' '\n' | grep . | median)" "$(pgbr_bytes "$full_pgbr")" "$(ops_bytes "$full_ops")"

  change_a
  p=$(pgbr_backup incr); o=$(ops_backup incremental)
  a_ops=$(newest_ops); a_pgbr=$(ls -t "$DIR/pgbr/backup/bench" | grep -E '_[0-9]{8}-[0-9]{6}I$' | head -n 1)
  row "incremental after (a) new table, 5 %" "$p" "$o" "$(pgbr_bytes "$a_pgbr")" "$(ops_bytes "$a_ops")"

  change_b
  p=$(pgbr_backup incr); o=$(ops_backup incremental)
  b_ops=$(newest_ops); b_pgbr=$(ls -t "$DIR/pgbr/backup/bench" | grep -E '_[0-9]{8}-[0-9]{6}I$' | head -n 1)
  row "incremental after (b) updates on 1 % of pages" "$p" "$o" "$(pgbr_bytes "$b_pgbr")" "$(ops_bytes "$b_ops")"

  p=$(pgbr_backup diff); o=$(ops_backup differential)
  d_ops=$(newest_ops); d_pgbr=$(ls -t "$DIR/pgbr/backup/bench" | grep -E '_[0-9]{8}-[0-9]{6}D$' | head -n 1)
  row "differential (a + b)" "$p" "$o" "$(pgbr_bytes "$d_pgbr")" "$(ops_bytes "$d_ops")"

  T[pr]=""; T[or]=""
  for round in $(seq "$RUNS"); do
    fresh_dir "$DIR/r-pgbr"; T[pr]+="$(pgbr_restore "$d_pgbr" "$DIR/r-pgbr") "
    fresh_dir "$DIR/r-ops"; T[or]+="$(ops_restore "$d_ops" "$DIR/r-ops") "
  done
  full_restore_p=$(echo "${T[pr]}" | tr ' ' '\n' | grep . | median)
  full_restore_o=$(echo "${T[or]}" | tr ' ' '\n' | grep . | median)
  row "restore of the newest, whole (median of $RUNS)" "$full_restore_p" "$full_restore_o" "" ""

  for change in a b; do
    if [ "$change" = a ]; then before_p=$full_pgbr before_o=$full_ops after_p=$a_pgbr after_o=$a_ops
    else before_p=$a_pgbr before_o=$a_ops after_p=$b_pgbr after_o=$b_ops; fi
    for mode in delta timestamps; do
      fresh_dir "$DIR/d-pgbr"; pgbr_restore "$before_p" "$DIR/d-pgbr" >/dev/null
      fresh_dir "$DIR/d-ops"; ops_restore "$before_o" "$DIR/d-ops" >/dev/null
      p=$(pgbr_restore "$after_p" "$DIR/d-pgbr" "$mode"); o=$(ops_restore "$after_o" "$DIR/d-ops" "$mode")
      if [ "$mode" = delta ]; then what="delta restore after ($change), by checksum"
      else what="delta restore after ($change), by size and time (pgBackRest --force, opsrunner delta_compare: timestamp)"; fi
      row "$what" "$p" "$o" "" ""
      awk -v p="$p" -v o="$o" -v fp="$full_restore_p" -v fo="$full_restore_o" 'BEGIN{
        printf "|  |  | … ÷ a whole restore of the same tool |  |  | pgBackRest %.2f×, opsrunner %.2f× |  |  |\n", p/fp, o/fo }'
    done
  done
  peak=$(echo "$rss" | tr ' ' '\n' | grep . | sort -g | tail -n 1)
  echo "|  |  | opsrunner full backup, peak resident memory |  | $(awk -v k="$peak" 'BEGIN{printf "%.0f MiB", k/1024}') |  |  |  |"
done
