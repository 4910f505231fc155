#!/usr/bin/env bash
# Data mobility benchmark (issue 34), two comparisons in the same run, each against what a
# user would otherwise run:
#
#   copy:   `opsrunner backups copy` of a backup of the data set (not compressed, so that
#           about as many bytes move as the data set holds) from a local repository to
#           S3 (the tests' s3s server, examples/s3_server.rs, release build; every file read
#           back and checked against its SHA-256 on the way, manifest last), against the
#           store's own upload of the very same stored bytes: a SigV4-signed multipart
#           upload by curl, as the AWS CLI makes one (same part size, two parts at a time).
#   export: an `export` step of a 1 GB table (made in the data set's database once) as CSV
#           compressed with zstd
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
# shellcheck source=bench/dataset.sh
. bench/dataset.sh
S3PORT=${S3PORT:-9322}
# shellcheck source=bench/s3.sh
. bench/s3.sh
mkdir -p "$WORK/s3/backups-bucket" "$WORK/repo"

# A table of about 1 GB that is not blank padding (pgbench_accounts is, and compresses a
# hundredfold): 9 million rows of md5 text, bigint and timestamps, made once and kept.
# TABLE=wide (with DATASET=wide) exports the wide data set's 300,000 rows of long text and
# jsonb instead.
TABLE=${TABLE:-export_1g}
"$BIN/psql" -X -q "$DB" -c "create table if not exists export_1g as select g as id, md5(g::text) as a, md5((g * 7)::text) as b, g::bigint * 7919 as n, now() - g * interval '1 second' as at from generate_series(1, 9000000) g"
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
  - { id: backup, type: backup, target: db, repository: local, compression: none }
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
# The store's own upload of the same bytes, as the AWS CLI makes it: a file larger than a
# part goes up as a multipart upload of PART-byte parts, two at a time (opsrunner's part
# size and concurrency), a smaller one in one PUT; curl signs each request (SigV4,
# UNSIGNED-PAYLOAD). The parts are cut before the clock starts.
PART=$((16 * 1024 * 1024))
s3curl() { # METHOD PATH-AND-QUERY [curl args…]
  local method=$1 path=$2; shift 2
  curl -sSf -X "$method" --aws-sigv4 "aws:amz:us-east-1:s3" \
    --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" \
    "$@" "http://127.0.0.1:$S3PORT/backups-bucket/$path"
}
mkdir -p "$WORK/parts"
for f in "$WORK/repo/$ID"/*; do
  if [ "$(stat -c %s "$f")" -gt "$PART" ]; then
    mkdir -p "$WORK/parts/$(basename "$f")"
    split -b "$PART" -d -a 5 "$f" "$WORK/parts/$(basename "$f")/part."
  fi
done
upload_part() { # KEY UPLOAD-ID FILE: prints "N ETAG"
  local n=$((10#${3##*.} + 1))
  local etag
  etag=$(s3curl PUT "$1?partNumber=$n&uploadId=$2" -T "$3" -D - -o /dev/null | tr -d '\r' | sed -n 's/^[Ee][Tt]ag: *//p')
  [ -n "$etag" ] || { echo "no ETag for part $n of $1" >&2; return 1; }
  echo "$n $etag"
}
upload() {
  for f in "$WORK/repo/$ID"/*; do
    local name key
    name=$(basename "$f"); key="curl/$ID/$name"
    if [ ! -d "$WORK/parts/$name" ]; then
      s3curl PUT "$key" -T "$f" >/dev/null
      continue
    fi
    local id
    id=$(s3curl POST "$key?uploads=" | sed -n 's:.*<UploadId>\(.*\)</UploadId>.*:\1:p')
    [ -n "$id" ] || { echo "no upload id for $key" >&2; return 1; }
    ls "$WORK/parts/$name"/part.* | xargs -P 2 -I{} bash -c "upload_part '$key' '$id' {}" >"$WORK/etags"
    { echo "<CompleteMultipartUpload>"
      sort -n "$WORK/etags" | while read -r n etag; do echo "<Part><PartNumber>$n</PartNumber><ETag>$etag</ETag></Part>"; done
      echo "</CompleteMultipartUpload>"; } >"$WORK/complete.xml"
    s3curl POST "$key?uploadId=$id" --data-binary @"$WORK/complete.xml" >/dev/null
  done
}
export_step() { "$OPS" apply "$WORK/export.yaml"; }
psql_zstd() {
  "$BIN/psql" -X -q "$DB" -c "\\copy $TABLE to stdout with (format csv, header)" | zstd -q -T2 -3 -f -o "$WORK/psql.csv.zst"
}

export WORK ID OPS BIN DB TABLE S3PORT PART
export -f copy upload upload_part s3curl export_step psql_zstd
declare -A BEST BEST_RSS
for round in $(seq "$RUNS"); do
  for v in copy upload export_step psql_zstd; do
    rm -rf "${WORK:?}/s3/backups-bucket/copy/$ID" "${WORK:?}/s3/backups-bucket/curl" "$WORK"/*.csv.zst
    sync
    /usr/bin/time -f "%e %M" -o "$WORK/time" bash -c "set -euo pipefail; $v" >/dev/null 2>"$WORK/err" \
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
echo "  curl, multipart as S3's ${BEST[upload]} s  $(rate "$STORED" "${BEST[upload]}") MiB/s  peak RSS $((BEST_RSS[upload] / 1024)) MiB"
echo "  ratio                   $(ratio "${BEST[copy]}" "${BEST[upload]}")×"
echo "export of table $TABLE ($(mib "$TABLE_BYTES") MiB on disk) as CSV + zstd:"
echo "  export step             ${BEST[export_step]} s  $(mib "$EXPORTED") MiB  peak RSS $((BEST_RSS[export_step] / 1024)) MiB"
echo "  psql \\copy | zstd -T2   ${BEST[psql_zstd]} s  $(mib "$PSQL_BYTES") MiB  peak RSS $((BEST_RSS[psql_zstd] / 1024)) MiB (psql's; zstd's not counted)"
echo "  ratio                   $(ratio "${BEST[export_step]}" "${BEST[psql_zstd]}")×"
