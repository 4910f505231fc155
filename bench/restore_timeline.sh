#!/usr/bin/env bash
# Where a parallel restore's time goes (issue 14, point 3): when each pg_restore run of
# opsrunner's restore starts (from its debug log), and, in the same run, when
# `pg_restore -v -j 2` of an uncompressed dump launches and finishes each item; CPU busy
# percent every half second beside both.
#
#   N=2 DATASET=standard bench/restore_timeline.sh     # N rounds of each
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/dataset.sh
. bench/dataset.sh
local_plans
"$OPS" apply "$WORK/backup.yaml" >/dev/null 2>&1
restore_plan "$(basename "$(dirname "$(ls "$WORK"/repo/*/dump.pgdump.zst | head -n 1)")")"
"$BIN/pg_dump" -Fc -Z0 --no-sync -f "$WORK/plain.dump" "$DB"

cpu() { # busy % of all cores every 0.5 s, until killed
  exec python3 -c '
import time
def read():
    v = list(map(int, open("/proc/stat").readline().split()[1:]))
    return sum(v), v[3] + v[4]
a = read()
while True:
    time.sleep(0.5)
    b = read()
    print(100 * ((b[0] - a[0]) - (b[1] - a[1])) // max(b[0] - a[0], 1), end=" ", flush=True)
    a = b'
}
stamp() { # prefix the lines matching $1 with seconds since the start
  python3 -c '
import re, sys, time
t0 = time.time()
for line in sys.stdin:
    if re.search(sys.argv[1], line):
        args = re.findall(r"--(?:section|jobs)=[^\" ,]*", line)
        print("%6.2f %s" % (time.time() - t0, " ".join(args) if args else line.strip()[:120]))
print("%6.2f done" % (time.time() - t0))' "$1"
}
for round in $(seq "${N:-2}"); do
  echo "== opsrunner restore, jobs 2 (round $round)"
  "$BIN/psql" -X -q -c "drop database if exists r_ops" postgres
  cpu > "$WORK/cpu" & CPU=$!
  OPSRUNNER_LOG=opsrunner=debug "$OPS" apply "$WORK/restore.yaml" 2>&1 >/dev/null |
    stamp "spawning|building|row counts"
  kill "$CPU"; echo "cpu %: $(cat "$WORK/cpu")"
  echo "== pg_restore -v -j 2 (round $round)"
  "$BIN/psql" -X -q -c "drop database if exists r_base" -c "create database r_base" postgres
  cpu > "$WORK/cpu" & CPU=$!
  "$BIN/pg_restore" -v -j 2 -d r_base "$WORK/plain.dump" 2>&1 | stamp "launching|finished item"
  kill "$CPU"; echo "cpu %: $(cat "$WORK/cpu")"
done
