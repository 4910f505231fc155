#!/usr/bin/env bash
# The two ways a parallel restore reads a custom archive, against pg_restore -j 2 of an
# uncompressed dump, alternating in one run (medians of ROUNDS):
#   stored   the backup as taken (its file has a seek index): each load reads its tables'
#            part of the stored file;
#   spooled  the same backup with the index removed from a copy of its manifest — what an
#            S3 repository, an encrypted backup or one by an older opsrunner takes: the
#            archive is decompressed to a local copy and each table loads as it arrives.
# With OLD=path/to/an/older/opsrunner, both are also run with that binary (A/B).
#
#   ROUNDS=5 DATASET=standard bench/restore_paths.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
# shellcheck source=bench/dataset.sh
. bench/dataset.sh

first_backup
# The same backup under another id, its manifest without the index.
SPOOLED="${ID}-noindex"
cp -r "$WORK/repo/$ID" "$WORK/repo/$SPOOLED"
python3 - "$WORK/repo/$SPOOLED/manifest.json" "$SPOOLED" <<'PY'
import json, sys
path, new_id = sys.argv[1], sys.argv[2]
m = json.load(open(path))
m["backup_id"] = new_id
for f in m["files"]:
    f.pop("index", None)
m["manifest_version"] = 1
json.dump(m, open(path, "w"))
PY
restore_plan "$ID" r_ops ", jobs: 2" "$WORK/stored.yaml"
restore_plan "$SPOOLED" r_ops ", jobs: 2" "$WORK/spooled.yaml"
fresh() {
  for d in r_base r_ops; do "$BIN/psql" -X -q -c "drop database if exists $d" postgres; done
  "$BIN/psql" -X -q -c "create database r_base" postgres
}
PREP=fresh
for round in $(seq "$ROUNDS"); do
  echo "round $round of $ROUNDS" >&2
  measure pg_restore "$BIN/pg_restore" -j 2 --exit-on-error -d r_base "$WORK/plain.dump"
  measure stored "$OPS" apply "$WORK/stored.yaml"
  measure spooled "$OPS" apply "$WORK/spooled.yaml"
  if [ -n "${OLD:-}" ]; then
    measure old_stored "$OLD" apply "$WORK/stored.yaml"
    measure old_spooled "$OLD" apply "$WORK/spooled.yaml"
  fi
done

row() {
  grep -q "^$1 " "$WORK/times" || return 0
  echo "| $2 | $(median "$1" 2) | $(median "$1" 3) | $(median "$1" 4) | $(peak "$1") | $(awk "BEGIN { printf \"%.2f\", $(median "$1" 2) / $(median pg_restore 2) }") |"
}
cat <<REPORT
data set $DATASET ($SIZE), $(nproc) cores, $ROUNDS alternating rounds, medians

| what | wall s | user s | system s | peak RSS MiB | ÷ pg_restore -j 2 |
|---|---|---|---|---|---|
$(row pg_restore "\`pg_restore -j 2\` of an uncompressed custom dump")
$(row stored "restore \`jobs: 2\`, stored file (seek index)")
$(row spooled "restore \`jobs: 2\`, spooled copy (no index)")
$(row old_stored "OLD: stored file")
$(row old_spooled "OLD: spooled copy")
REPORT
