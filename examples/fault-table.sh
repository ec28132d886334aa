#!/usr/bin/env bash
# Runs the fleet under each fault of `--chaos` on each store, one fault per run beside `kill`
# (so that every run measures takeovers too), and prints the results as a Markdown table:
# examples/README.md's "Every fault on every store" comes from it.
#
#   bash examples/fault-table.sh                         # every store × fault, 10 minutes each
#   bash examples/fault-table.sh --duration 1m redis etcd:partition,clock
#   bash examples/fault-table.sh --jobs 2 --out /tmp/faults sqlite
#   bash examples/fault-table.sh --fleet /tmp/fleet etcd:leader-partition   # a fleet built before
#
# A run goes to OUT/<store>-<fault>/ (default OUT: target/fault-table): its history, the fleet's
# output (output.txt) and the command that made it (command.txt). `--jobs N` runs N fleets at
# once (each has its own servers); on two cores, 2 is the most that leaves the workers their
# timing. The seed is 7 unless `--seed` says otherwise. Exits non-zero if any run failed.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=10m
out=target/fault-table
jobs=1
seed=7
fleet=
picks=()
while (($#)); do
  case $1 in
    --duration) duration=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --fleet) fleet=$(realpath "$2"); shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    -*) echo "fault-table: unknown option $1" >&2; exit 2 ;;
    *) picks+=("$1"); shift ;;
  esac
done

# The faults of each store that apply to it (see examples/README.md), and its lease: etcd's
# shortest is 2 s. `failover-wait` is the failover with every grant waiting for the replica.
# `kill`, `pause` and `store-restart` have runs of their own in the README; here every run has
# kills beside its fault.
declare -A faults=(
  [sqlite]="slow,clock"
  [redis]="slow,store-pause,partition,clock,failover,failover-wait"
  [etcd]="slow,store-pause,partition,clock,leader-partition"
  [postgres]="slow,store-pause,partition,clock"
)
declare -A lease=([sqlite]=1s [redis]=1s [etcd]=2s [postgres]=1s)
((${#picks[@]})) || picks=(sqlite redis etcd postgres)

runs=()
for pick in "${picks[@]}"; do
  store=${pick%%:*}
  [[ -n ${faults[$store]:-} ]] || { echo "fault-table: unknown store $store (sqlite, redis, etcd, postgres)" >&2; exit 2; }
  list=${faults[$store]}
  [[ $pick == *:* ]] && list=${pick#*:}
  IFS=, read -ra fs <<<"$list"
  for f in "${fs[@]}"; do runs+=("$store $f"); done
done

if [[ -z $fleet ]]; then
  echo "fault-table: building the fleet (release, every store)" >&2
  cargo build --release --locked -q -p lease-examples --all-features --bin fleet
  fleet=$PWD/target/release/fleet
fi
mkdir -p "$out"

run_one() {
  local store=$1 fault=$2 dir="$out/$1-$2" url=$1 chaos=$2
  if [[ $fault == failover-wait ]]; then url='redis?wait_replicas=1'; chaos=failover; fi
  chaos=kill,$chaos
  rm -rf "$dir"; mkdir -p "$dir"
  local cmd=(fleet)
  # SQLite: the fleet's default store, a database in the run's directory.
  [[ $store == sqlite ]] || cmd+=(--store "$url")
  cmd+=(--chaos "$chaos" --seed "$seed" --duration "$duration" --lease "${lease[$store]}" --dir "$dir")
  printf '%q ' "${cmd[@]}" >"$dir/command.txt"
  echo >>"$dir/command.txt"
  local status=ok
  "$fleet" "${cmd[@]:1}" >"$dir/output.txt" 2>"$dir/stderr.txt" || status=failed
  # A fault the fleet could not apply (it says why) leaves a run without it: not a result.
  if ! grep -q "^[a-z-]*/kill+${chaos#kill,}: " "$dir/output.txt"; then
    status="failed: the run has no ${chaos#kill,} ($(grep -m1 'skipped' "$dir/output.txt" || echo 'see stderr.txt'))"
  fi
  echo "fault-table: $store $fault: $status ($(grep -m1 ' acquisitions, ' "$dir/output.txt" | cut -d: -f2 | cut -d, -f1 | xargs))" >&2
  [[ $status == ok ]]
}

failed=0
pids=()
for r in "${runs[@]}"; do
  read -r store fault <<<"$r"
  echo "fault-table: $store $fault for $duration" >&2
  run_one "$store" "$fault" &
  pids+=($!)
  if ((${#pids[@]} >= jobs)); then
    wait "${pids[0]}" || failed=1
    pids=("${pids[@]:1}")
  fi
done
for p in "${pids[@]}"; do wait "$p" || failed=1; done

# One row per run, labelled by store and fault (the fleet's own run name does not tell a
# failover that waits for its replica from one that does not).
header_done=0
for r in "${runs[@]}"; do
  read -r store fault <<<"$r"
  h=$out/$store-$fault/history
  [[ -f $h/run.json ]] || { echo "| $store $fault | (no run) |"; failed=1; continue; }
  rows=$("$fleet" check --markdown "$h") || failed=1
  ((header_done)) || { head -n2 <<<"$rows"; header_done=1; }
  tail -n1 <<<"$rows" | sed "s/^| [^|]* |/| $store $fault |/"
done
echo
for r in "${runs[@]}"; do
  read -r store fault <<<"$r"
  echo "- $store $fault: \`$(cat "$out/$store-$fault/command.txt" | sed 's/ *$//')\`"
done
exit $failed
