#!/usr/bin/env bash
# Backup and restore benchmark (issue 3): builds the data set, then runs the baselines and
# opsrunner side by side in one run and prints wall times, sizes, peak RSS and ratios.
#
#   bench/pg_backup.sh            # needs: cargo, PostgreSQL server binaries, zstd, GNU time
#
# Data set: see bench/dataset.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-1}
# shellcheck source=bench/dataset.sh
. bench/dataset.sh
for db in r_base r_jobs r_stream; do "$BIN/psql" -X -q -c "drop database if exists $db" postgres; done

time_it raw "$BIN/pg_dump" -Fc -Z0 --no-sync -f /dev/null bench
time_it gzip "$BIN/pg_dump" -Fc --no-sync -f "$WORK/gzip.dump" bench
time_it pipeline bash -c "set -o pipefail; '$BIN/pg_dump' -Fc -Z0 bench | zstd -q -T2 | tee '$WORK/pipe.dump.zst' | sha256sum > '$WORK/pipe.sha'"

local_plans "${OPS_EXTRA:-}"
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
  restore_plan "$ID" "r_$mode" "$extra" "$WORK/restore-$mode.yaml"
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
| **opsrunner restore**, jobs 2 (each table loaded as its data arrives, its indexes once loaded) | ${WALL[restore_jobs]} | – | $(mib $((RSS[restore_jobs]*1024))) |
| **opsrunner restore**, streamed into pg_restore | ${WALL[restore_stream]} | – | $(mib $((RSS[restore_stream]*1024))) |

ratios: backup/raw $(ratio opsrunner raw) (goal ≤ 1.5), backup/pipeline $(ratio opsrunner pipeline) (goal ≤ 1.0),
backup/pg_dump -Fc $(ratio opsrunner gzip) (goal ≤ 0.4), restore(jobs 2)/pg_restore -j 2 $(ratio restore_jobs restore_base),
restore(streamed)/pg_restore -j 2 $(ratio restore_stream restore_base) (goal ≤ 1.2)
REPORT
