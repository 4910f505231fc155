#!/usr/bin/env bash
# Hostile and huge plans (issue 9, bounded parsing): how long `opsrunner validate` takes and
# how much memory it peaks at, for an alias bomb, deep nesting, a plan of many steps and a
# plan of many variables, against a tiny valid plan measured in the same run (the process's
# own start-up: the baseline).
#
#   bench/hostile_plans.sh        # needs: cargo, GNU time (/usr/bin/time)
#
# Each figure is the median of RUNS (default 5) runs.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-5}
cargo build --release --quiet
OPS=$PWD/target/release/opsrunner
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

python3 - "$WORK" <<'PY'
import sys
work = sys.argv[1]
def write(name, text):
    with open(f"{work}/{name}", "w") as f:
        f.write(text)
write("tiny.yaml", 'version: 1\nname: t\nsteps:\n  - { id: a, type: shell, command: "true" }\n')
# The billion laughs in YAML: 9 levels of 9 aliases each, 256 bytes.
bomb = "version: 1\nname: b\na: &a [x,x,x,x,x,x,x,x,x]\n"
prev = "a"
for n in "bcdefghi":
    bomb += f"{n}: &{n} [" + ",".join([f"*{prev}"] * 9) + "]\n"
    prev = n
bomb += "steps: []\n"
write("bomb.yaml", bomb)
write("deep.yaml", "version: 1\nname: d\nvars: { a: " + "[" * 100000 + "]" * 100000 + " }\nsteps: []\n")
steps = ["version: 1\nname: s\nsteps:\n"]
for i in range(100000):
    steps.append(f'  - {{ id: s{i}, type: shell, command: "echo {i}" }}\n')
write("steps.yaml", "".join(steps))
# The same number of steps as people write them: block style, needs, retry, timeout.
steps = ["version: 1\nname: r\nsteps:\n"]
for i in range(100000):
    steps.append(f"  - id: step-{i}\n    type: shell\n    command: echo {i} >> /var/tmp/out.txt\n")
    if i:
        steps.append(f"    needs: [step-{i - 1}]\n")
    steps.append("    retry: { attempts: 3, delay: 5s }\n    timeout: 10m\n")
write("written.yaml", "".join(steps))
lines = ["version: 1\nname: v\nvars:\n"]
for i in range(200000):
    lines.append(f"  v{i}: {i}\n")
lines.append('steps:\n  - { id: a, type: shell, command: "true" }\n')
write("vars.yaml", "".join(lines))
PY

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

measure() { # name file → "seconds KiB exit"
  local name=$1 file=$2 secs=() kib=() code=0
  for _ in $(seq "$RUNS"); do
    local start end
    start=$(date +%s%N)
    /usr/bin/time -f "%M" -o "$WORK/t" "$OPS" validate "$file" >/dev/null 2>"$WORK/err" || code=$?
    end=$(date +%s%N)
    # GNU time puts "Command exited with non-zero status N" first: the figure is last.
    secs+=("$(awk -v ns=$((end - start)) 'BEGIN { printf "%.4f", ns / 1e9 }')")
    kib+=("$(tail -n 1 "$WORK/t")")
  done
  local s k
  s=$(printf '%s\n' "${secs[@]}" | median)
  k=$(printf '%s\n' "${kib[@]}" | median)
  printf '%-6s %8s bytes  %8s s  %8s KiB  exit %s\n' "$name" "$(stat -c %s "$file")" "$s" "$k" "$code"
  eval "S_$name=$s K_$name=$k B_$name=$(stat -c %s "$file")"
}

for name in tiny bomb deep steps written vars; do
  measure "$name" "$WORK/$name.yaml"
done
echo
echo "ratios against the tiny plan (start-up) measured in this run:"
for name in bomb deep steps written vars; do
  s=S_$name k=K_$name b=B_$name
  awk -v s="${!s}" -v k="${!k}" -v b="${!b}" -v s0="$S_tiny" -v k0="$K_tiny" -v n="$name" \
    'BEGIN { printf "%-6s time %.1fx, peak memory %.1fx of the tiny plan; memory above start-up %.1f MiB = %.1fx the file\n", n, (s0 > 0 ? s / s0 : 0), k / k0, (k - k0) / 1024, (k - k0) * 1024 / b }'
done
