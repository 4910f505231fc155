#!/usr/bin/env bash
# S3 backup benchmark (issue 4): a backup of the data set (bench/dataset.sh) straight to a
# local S3-compatible server — the tests' s3s server, examples/s3_server.rs, release build —
# against the same backup to a local directory, and the S3 backup with age encryption.
# The variants alternate within each round, so that a noisy moment hurts them alike; each
# figure is the best of RUNS rounds. Prints wall times, peak RSS, sizes, throughput, ratios.
#
#   RUNS=3 bench/s3_backup.sh     # needs: cargo, PostgreSQL server binaries, GNU time
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
# shellcheck source=bench/dataset.sh
. bench/dataset.sh
S3PORT=${S3PORT:-9321}
# shellcheck source=bench/s3.sh
. bench/s3.sh
mkdir -p "$WORK/repo"

# A recipient whose identity nobody here holds: the benchmark only encrypts.
RECIPIENT=age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p
plan() { # NAME REPOSITORY-YAML
  cat >"$WORK/$1.yaml" <<YAML
version: 1
name: bench-$1
targets:
  db: { url: "$URL" }
repositories:
  repo: $2
steps:
  - { id: backup, type: backup, target: db, repository: repo }
YAML
}
plan local "{ url: \"file://$WORK/repo\", create: true }"
plan s3 "{ url: \"s3://backups-bucket/bench\", endpoint: \"http://127.0.0.1:$S3PORT\", force_path_style: true, create: true }"
plan s3_age "{ url: \"s3://backups-bucket/bench-age\", endpoint: \"http://127.0.0.1:$S3PORT\", force_path_style: true, encryption: { recipients: [\"$RECIPIENT\"] }, create: true }"

declare -A BEST BEST_RSS BYTES
VARIANTS="local s3 s3_age"
for round in $(seq "$RUNS"); do
  for v in $VARIANTS; do
    # Each run starts from empty repositories (and keeps the disk small).
    rm -rf "${WORK:?}/repo/"* "${WORK:?}/s3/backups-bucket/"*
    /usr/bin/time -f "%e %M" -o "$WORK/time" "$OPS" apply "$WORK/$v.yaml" --report "$WORK/$v.json" \
      >/dev/null 2>"$WORK/err" || { cat "$WORK/err" >&2; exit 1; }
    read -r wall rss <"$WORK/time"
    BYTES[$v]=$(sed -n 's/.*"bytes": *"\([0-9]*\)".*/\1/p' "$WORK/$v.json" | head -n 1)
    echo "round $round: $v ${wall}s, peak RSS $((rss / 1024)) MiB" >&2
    if [ -z "${BEST[$v]:-}" ] || awk "BEGIN{exit !($wall < ${BEST[$v]})}"; then
      BEST[$v]=$wall
      BEST_RSS[$v]=$rss
    fi
  done
done

# Downloads stream too: verify the last S3 backup (every file re-read and hashed, the
# archive's table of contents listed), once.
cat >"$WORK/verify.yaml" <<YAML
version: 1
name: bench-verify
repositories:
  repo: { url: "s3://backups-bucket/bench", endpoint: "http://127.0.0.1:$S3PORT", force_path_style: true, create: true }
steps:
  - { id: verify, type: verify, repository: repo, backup: latest }
YAML
rm -rf "${WORK:?}/s3/backups-bucket/"*
"$OPS" apply "$WORK/s3.yaml" >/dev/null 2>"$WORK/err" || { cat "$WORK/err" >&2; exit 1; }
/usr/bin/time -f "%e %M" -o "$WORK/time" "$OPS" apply "$WORK/verify.yaml" >/dev/null 2>"$WORK/err" \
  || { cat "$WORK/err" >&2; exit 1; }
read -r VERIFY_WALL VERIFY_RSS <"$WORK/time"

DB_BYTES=$("$BIN/psql" -X -At "$DB" -c "select pg_database_size('$DB')")
mib() { awk "BEGIN{printf \"%.0f\", $1/1048576}"; }
rate() { awk "BEGIN{printf \"%.0f\", $1/1048576/$2}"; }
ratio() { awk "BEGIN{printf \"%.2f\", ${BEST[$1]}/${BEST[$2]}}"; }
row() { # VARIANT LABEL
  echo "| $2 | ${BEST[$1]} | $(mib "${BYTES[$1]}") | $(rate "$DB_BYTES" "${BEST[$1]}") | $(rate "${BYTES[$1]}" "${BEST[$1]}") | $(mib $((BEST_RSS[$1] * 1024))) |"
}
cat <<REPORT
data set: $SIZE, $(nproc) cores, best of $RUNS rounds (variants alternate within a round)

| what | wall s | stored MiB | database MiB/s | stored MiB/s | peak RSS MiB |
|---|---|---|---|---|---|
$(row local "backup to a local directory (baseline)")
$(row s3 "**backup to S3** (multipart, 16 MiB parts, 2 in flight, CRC32)")
$(row s3_age "**backup to S3, age-encrypted**")
| verify of the S3 backup (download + SHA-256 of every file, archive listing), once | $VERIFY_WALL | | | | $(mib $((VERIFY_RSS * 1024))) |

ratios: S3/local $(ratio s3 local) (goal ≤ 1.15), S3 encrypted/local $(ratio s3_age local); peak RSS goal ≤ 128 MiB
REPORT
