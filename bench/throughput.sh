#!/usr/bin/env bash
# Backup and restore against their shell equivalents (issue 14), alternating in one run so
# that the machine's noise falls on both alike; medians of ROUNDS rounds.
#
#   ROUNDS=5 DATASET=standard bench/throughput.sh    # standard | wide | large (bench/dataset.sh)
#
# Per round, in this order:
#   pipeline    pg_dump -Fc -Z0 | zstd -q -T0 -3 | tee FILE | sha256sum
#   backup      opsrunner backup with the defaults (custom, zstd level 3 on all cores,
#               SHA-256, row-count fingerprints) into a local repository
#   pg_restore  pg_restore -j 2 of an uncompressed custom dump written to a file
#   restore     opsrunner restore of its own backup with jobs: 2 (includes the check of
#               the restored row counts against the manifest)
# Printed: median wall, user and system seconds and the largest peak RSS of each, the
# ratios of the medians, and the stored sizes.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
# shellcheck source=bench/dataset.sh
. bench/dataset.sh

first_backup
restore_plan "$ID"
fresh() {
  for d in r_base r_ops; do "$BIN/psql" -X -q -c "drop database if exists $d" postgres; done
  "$BIN/psql" -X -q -c "create database r_base" postgres
}

SIZES=()
for round in $(seq "$ROUNDS"); do
  echo "round $round of $ROUNDS" >&2
  measure pipeline bash -c "set -o pipefail; '$BIN/pg_dump' -Fc -Z0 '$DB' | zstd -q -T0 -3 | tee '$WORK/pipe.zst' | sha256sum > /dev/null"
  # Only the round's own backup in the repository: the restore's is kept aside.
  find "$WORK/repo" -mindepth 1 -maxdepth 1 ! -name "$ID" -exec rm -rf {} +
  measure backup "$OPS" apply "$WORK/backup.yaml"
  OPS_FILE=$(find "$WORK/repo" -name 'dump.pgdump.zst' ! -path "*/$ID/*" | head -n 1)
  SIZES+=("$(stat -c %s "$OPS_FILE")")
  fresh
  measure pg_restore "$BIN/pg_restore" -j 2 --exit-on-error -d r_base "$WORK/plain.dump"
  fresh
  measure restore "$OPS" apply "$WORK/restore.yaml"
done

ratio() { awk "BEGIN { printf \"%.2f\", $(median "$1" 2) / $(median "$2" 2) }"; }
row() { echo "| $2 | $(median "$1" 2) | $(median "$1" 3) | $(median "$1" 4) | $(peak "$1") |"; }
cat <<REPORT
data set $DATASET ($SIZE), $(nproc) cores, $ROUNDS alternating rounds, medians

| what | wall s | user s | system s | peak RSS MiB |
|---|---|---|---|---|
$(row pipeline "\`pg_dump -Fc -Z0 | zstd -T0 -3 | tee | sha256sum\`")
$(row backup "**opsrunner backup** (defaults)")
$(row pg_restore "\`pg_restore -j 2\` of an uncompressed custom dump")
$(row restore "**opsrunner restore**, \`jobs: 2\`")

backup / pipeline $(ratio backup pipeline) (goal ≤ 1.0); restore / pg_restore -j 2 $(ratio restore pg_restore) (goal ≤ 1.2)
stored: pipeline $(stat -c %s "$WORK/pipe.zst") B, opsrunner ${SIZES[*]} B
REPORT
