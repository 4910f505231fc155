#!/usr/bin/env bash
# Data mobility benchmark (issue 34), two comparisons in the same run, each against what a
# user would otherwise run:
#
#   copy:   `opsrunner backups copy` of a backup of the data set from a local repository to
#           S3 (the tests' s3s server, examples/s3_server.rs, release build; every file read
#           back and checked against its SHA-256 on the way, manifest last), against the
#           store's own upload of the very same stored bytes: curl's SigV4 PUT of each file.
#   export: an `export` step of the data set's largest table as CSV compressed with zstd
#           into a file, against `psql -c '\copy TABLE to stdout with (format csv, header)' |
#           zstd -T2` into a file.
#
# Variants alternate within each round so a noisy moment hurts both; each figure is the
# best of RUNS rounds.
#
#   RUNS=3 bench/mobility.sh            # DATASET=wide for the other shape
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
cargo build --release --quiet --example s3_server
# shellcheck source=bench/dataset.sh
. bench/dataset.sh

S3PORT=${S3PORT:-9322}
mkdir -p "$WORK/s3/backups-bucket" "$WORK/repo"
target/release/examples/s3_server "$WORK/s3" "$S3PORT" >"$WORK/s3.log" 2>&1 &
S3PID=$!
trap 'kill $S3PID 2>/dev/null || true; cleanup' EXIT
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$S3PORT") 2>/dev/null && break; sleep 0.1; done
export AWS_ACCESS_KEY_ID=AKIAOPSRUNNERTEST AWS_SECRET_ACCESS_KEY=opsrunner-test-secret-key-0123456789
export AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
export AWS_CONFIG_FILE=/nonexistent AWS_SHARED_CREDENTIALS_FILE=/nonexistent

# The largest table of the data set.
TABLE=$("$BIN/psql" -X -At "$DB" -c "select c.oid::regclass from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.relkind = 'r' and n.nspname = 'public' order by pg_total_relation_size(c.oid) desc limit 1")
TABLE_BYTES=$("$BIN/psql" -X -At "$DB" -c "select pg_table_size('$TABLE')")

cat >"$WORK/plan.yaml" <<YAML
version: 1
name: bench-mobility
targets:
  db: { url: "$URL" }
repositories:
  local: { url: "file://$WORK/repo", create: true }
  offsite: { url: "s3://backups-bucket/copy", endpoint: "http://127.0.0.1:$S3PORT", force_path_style: true, create: true }
steps:
  - { id: backup, type: backup, target: db, repository: local }
YAML
cat >"$WORK/export.yaml" <<YAML
version: 1
name: bench-export
targets:
  db: { url: "$URL" }
steps:
  - { id: export, type: export, target: db, table: "$TABLE", file: "$WORK/export.csv.zst" }
YAML
"$OPS" apply "$WORK/plan.yaml" >/dev/null 2>"$WORK/err" || { cat "$WORK/err" >&2; exit 1; }
ID=$(ls "$WORK/repo" | grep -v '^opsrunner-repository.json$' | head -n 1)
STORED=$(du -sb "$WORK/repo/$ID" | cut -f1)
"$OPS" repo init offsite --plan "$WORK/plan.yaml" >/dev/null

copy() {
  "$OPS" backups copy --plan "$WORK/plan.yaml" --from local --to offsite "$ID"
}
upload() { # the same stored files, one SigV4 PUT each
  for f in "$WORK/repo/$ID"/*; do
    curl -sSf --aws-sigv4 "aws:amz:us-east-1:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
      -T "$f" "http://127.0.0.1:$S3PORT/backups-bucket/curl/$ID/$(basename "$f")" >/dev/null
  done
}
export_step() { "$OPS" apply "$WORK/export.yaml"; }
psql_zstd() {
  "$BIN/psql" -X -q "$DB" -c "\\copy $TABLE to stdout with (format csv, header)" | zstd -q -T2 -3 -f -o "$WORK/psql.csv.zst"
}

export WORK ID OPS BIN DB TABLE S3PORT
export -f copy upload export_step psql_zstd
declare -A BEST BEST_RSS
for round in $(seq "$RUNS"); do
  for v in copy upload export_step psql_zstd; do
    rm -rf "${WORK:?}/s3/backups-bucket/copy/$ID" "${WORK:?}/s3/backups-bucket/curl" "$WORK"/*.csv.zst
    /usr/bin/time -f "%e %M" -o "$WORK/time" bash -c "$v" >/dev/null 2>"$WORK/err" \
      || { cat "$WORK/err" >&2; exit 1; }
    read -r wall rss <"$WORK/time"
    echo "round $round: $v ${wall}s, peak RSS $((rss / 1024)) MiB" >&2
    if [ -z "${BEST[$v]:-}" ] || awk "BEGIN{exit !($wall < ${BEST[$v]})}"; then
      BEST[$v]=$wall
      BEST_RSS[$v]=$rss
    fi
  done
done
# The copy is whole: its manifest is there and `verify` passes where it is.
"$OPS" backups copy --plan "$WORK/plan.yaml" --from local --to offsite "$ID" >/dev/null
"$OPS" verify --plan "$WORK/plan.yaml" --repository offsite --backup "$ID" --no-restore >/dev/null
export_step >/dev/null 2>&1
psql_zstd
EXPORTED=$(stat -c %s "$WORK/export.csv.zst")
PSQL_BYTES=$(stat -c %s "$WORK/psql.csv.zst")

mib() { awk "BEGIN{printf \"%.0f\", $1/1048576}"; }
rate() { awk "BEGIN{printf \"%.0f\", $1/1048576/$2}"; }
ratio() { awk "BEGIN{printf \"%.2f\", $1/$2}"; }
echo
echo "data set $DATASET, $RUNS rounds, best of each"
echo "copy of backup $ID ($(mib "$STORED") MiB stored) local → S3:"
echo "  opsrunner backups copy  ${BEST[copy]} s  $(rate "$STORED" "${BEST[copy]}") MiB/s  peak RSS $((BEST_RSS[copy] / 1024)) MiB"
echo "  curl PUT of the files   ${BEST[upload]} s  $(rate "$STORED" "${BEST[upload]}") MiB/s  peak RSS $((BEST_RSS[upload] / 1024)) MiB"
echo "  ratio                   $(ratio "${BEST[copy]}" "${BEST[upload]}")×"
echo "export of table $TABLE ($(mib "$TABLE_BYTES") MiB on disk) as CSV + zstd:"
echo "  export step             ${BEST[export_step]} s  $(mib "$EXPORTED") MiB  peak RSS $((BEST_RSS[export_step] / 1024)) MiB"
echo "  psql \\copy | zstd -T2   ${BEST[psql_zstd]} s  $(mib "$PSQL_BYTES") MiB  peak RSS $((BEST_RSS[psql_zstd] / 1024)) MiB (psql's; zstd's not counted)"
echo "  ratio                   $(ratio "${BEST[export_step]}" "${BEST[psql_zstd]}")×"
