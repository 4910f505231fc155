#!/usr/bin/env bash
# WAL archiving benchmark (issue 13): how many 16 MiB segments per second `opsrunner wal
# push` archives into a local repository and into S3 (the tests' s3s server,
# examples/s3_server.rs), against the shell archive_command it replaces,
# `zstd -q -3 -c %p > DIR/%f.zst && sync` (per segment, as PostgreSQL calls it). Two shapes
# of data: real WAL (pgbench -i plus md5 text rows, written by a throwaway cluster) and
# incompressible segments (random bytes, the worst case). The variants alternate within
# each round; each figure is the median of RUNS rounds. Release build.
#
#   RUNS=5 bench/wal_push.sh     # needs: cargo, PostgreSQL server binaries, zstd
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-5}
cargo build --release --quiet --bin opsrunner --example s3_server
OPS=$PWD/target/release/opsrunner
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
WORK=$(mktemp -d /tmp/opsrunner-walbench.XXXXXX)
chmod 755 "$WORK"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

# Real WAL: a throwaway cluster copies every segment it fills into $WORK/real.
mkdir -p "$WORK/real" "$WORK/random" "$WORK/sock" "$WORK/data"
[ "$(id -u)" = 0 ] && chown postgres "$WORK/real" "$WORK/sock" "$WORK/data"
as_pg "$BIN/initdb" -D "$WORK/data" -U postgres -A trust -N >/dev/null
as_pg "$BIN/pg_ctl" -D "$WORK/data" -l "$WORK/sock/server.log" -w -o "-p 5499 -k $WORK/sock -c listen_addresses='' -c archive_mode=on -c archive_command='cp %p $WORK/real/%f' -c max_wal_size=1GB" start >/dev/null
S3PORT=${S3PORT:-9322}
cleanup() {
  as_pg "$BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
  kill "${S3PID:-0}" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
export PGHOST=$WORK/sock PGPORT=5499 PGUSER=postgres
"$BIN/pgbench" -q -i -s 8 postgres >/dev/null 2>&1
"$BIN/psql" -X -q postgres -c "create table t as select g, md5(g::text) a, md5((g*7)::text) b from generate_series(1, 600000) g" -c "select pg_switch_wal()" >/dev/null
for _ in $(seq 100); do
  ready=$("$BIN/psql" -X -At postgres -c "select count(*) from pg_ls_archive_statusdir() where name like '%.ready'")
  [ "$ready" = 0 ] && break
  sleep 0.2
done
as_pg "$BIN/pg_ctl" -D "$WORK/data" -m fast stop >/dev/null
REAL=$(ls "$WORK/real" | wc -l)
# As many random segments, named like the real ones so that they are valid WAL names.
i=0
for f in "$WORK"/real/*; do
  i=$((i + 1))
  head -c 16777216 /dev/urandom >"$WORK/random/$(printf '0000000200000000%08X' "$i")"
done
echo "segments: $REAL real ($(du -sh "$WORK/real" | cut -f1)), $REAL random" >&2

target/release/examples/s3_server "$WORK/s3" "$S3PORT" >"$WORK/s3.log" 2>&1 &
S3PID=$!
mkdir -p "$WORK/s3"
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$S3PORT") 2>/dev/null && break; sleep 0.1; done
export AWS_ACCESS_KEY_ID=AKIAOPSRUNNERTEST AWS_SECRET_ACCESS_KEY=opsrunner-test-secret-key-0123456789
export AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true AWS_ENDPOINT_URL=http://127.0.0.1:$S3PORT
export AWS_CONFIG_FILE=/nonexistent AWS_SHARED_CREDENTIALS_FILE=/nonexistent
cat >"$WORK/s3.yaml" <<YAML
version: 1
name: walbench
repositories:
  s3: { url: "s3://backups-bucket/wal", endpoint: "http://127.0.0.1:$S3PORT", force_path_style: true, create: true }
steps:
  - { id: noop, type: shell, command: "true" }
YAML
mkdir -p "$WORK/s3/backups-bucket"

# Seconds for one variant to archive every segment of SHAPE, one process per segment.
run_variant() { # VARIANT SHAPE ROUND
  local variant=$1 shape=$2 round=$3 out="$WORK/out-$1-$2-$3"
  mkdir -p "$out"
  local start end
  start=$(date +%s.%N)
  for f in "$WORK/$shape"/*; do
    case $variant in
      shell) zstd -q -3 -c "$f" >"$out/$(basename "$f").zst" && sync "$out/$(basename "$f").zst" ;;
      local) "$OPS" wal push "$f" --repository "file://$out" >/dev/null ;;
      s3) "$OPS" wal push "$f" --repository s3 --plan "$WORK/s3.yaml" >/dev/null ;;
    esac
  done
  end=$(date +%s.%N)
  rm -rf "$out" "$WORK/s3/backups-bucket/wal"
  awk "BEGIN{print $end - $start}"
}

median() { sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
declare -A T M
for shape in real random; do
  for round in $(seq "$RUNS"); do
    for variant in shell local s3; do
      T[$shape-$variant]+="$(run_variant "$variant" "$shape" "$round") "
    done
  done
done

printf '| data | segments | shell zstd -3 + sync | opsrunner wal push (local) | opsrunner wal push (S3) | local / shell | S3 / local |\n|---|---|---|---|---|---|---|\n'
for shape in real random; do
  for v in shell local s3; do
    M[$v]=$(echo "${T[$shape-$v]}" | tr ' ' '\n' | grep . | median)
  done
  awk -v s="${M[shell]}" -v l="${M[local]}" -v t="${M[s3]}" -v n="$REAL" -v shape="$shape" 'BEGIN{
    printf "| %s | %d | %.2f s (%.1f seg/s) | %.2f s (%.1f seg/s) | %.2f s (%.1f seg/s) | %.2f× | %.2f× |\n",
      shape, n, s, n/s, l, n/l, t, n/t, l/s, t/l }'
done
