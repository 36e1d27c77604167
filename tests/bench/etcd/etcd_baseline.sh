#!/usr/bin/env bash
# The etcd baseline of `make bench`: what a user would build instead of dtubroker, measured in the
# same run on the same machine (see README.md beside this script).
#
#   tests/bench/etcd/etcd_baseline.sh BUILD_DIR
#
# Installs what is missing (scripts/deps.sh bench), builds the Go driver into BUILD_DIR/etcd/,
# starts a 3-member etcd cluster on 127.0.0.64/.65/.66 (client port 2379, peer port 2380; default
# flags, so fsync on), runs the driver, which writes $BENCH_OUT_DIR/etcd.json (default
# <source>/build/bench/), and stops every member on the way out, also on error or interrupt.
# Exits non-zero only when it could not run, saying why and showing the members' log tails.
# Environment: ETCD_BENCH_DURATION (default 5s per throughput workload), ETCD_BENCH_SAMPLES
# (default 1000 per latency series).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source_dir=$(cd "$here/../../.." && pwd)

if (($# != 1)); then
  echo "usage: $0 BUILD_DIR" >&2
  exit 2
fi
mkdir -p "$1"
build_dir=$(cd "$1" && pwd)
out_dir=${BENCH_OUT_DIR:-$source_dir/build/bench}
out="$out_dir/etcd.json"

readonly addresses=(127.0.0.64 127.0.0.65 127.0.0.66)
readonly client_port=2379 peer_port=2380
# Bounded waits (s): the cluster answers health checks within a few seconds of starting; members
# stop within a second of SIGTERM unless a leader is handing over.
readonly health_timeout_s=30 stop_timeout_s=2

tmp=
pids=()
driver_pid=
show_logs=0

# Says why the baseline could not run; the EXIT trap then shows the logs and cleans up.
die() {
  echo "etcd_baseline: $*" >&2
  show_logs=1
  exit 1
}

# Whether member process $1 still runs. The driver kills the leader and its pid may be reused
# before the cleanup: only a process that is still an etcd is ours to stop.
is_member() {
  [[ $(cat "/proc/$1/comm" 2>/dev/null) == etcd ]]
}

# True while $1 runs, zombies aside: an etcd member, or the shell forked for one that has not yet
# exec'd etcd (its comm is still this script's for a moment after `&`, longer on a loaded host).
is_starting_member() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ -n $stat && ${stat%% *} != Z ]]
}

# Waits up to $1 seconds for every member to be gone.
wait_gone() {
  local i pid alive
  for ((i = 0; i < $1 * 10; i++)); do
    alive=0
    for pid in "${pids[@]}"; do
      is_member "$pid" && alive=1
    done
    ((alive)) || return 0
    sleep 0.1
  done
}

# Shows the tail of each member's log as it stood when the run failed (not when interrupted;
# before stopping them adds shutdown chatter), stops the driver and every member still running
# (SIGTERM, then SIGKILL after stop_timeout_s), and removes the temporary directory.
cleanup() {
  local status=$?
  local pid log
  if { ((show_logs)) || ((status != 0 && status != 130 && status != 143)); } && [[ -n $tmp ]]; then
    for log in "$tmp"/m*.log; do
      [[ -f $log ]] || continue
      echo "--- last lines of $(basename "$log") (etcd member log) ---" >&2
      tail -n 10 "$log" >&2
    done
  fi
  if [[ -n $driver_pid ]]; then
    kill -TERM "$driver_pid" 2>/dev/null || true
    wait "$driver_pid" 2>/dev/null || true
  fi
  for pid in "${pids[@]}"; do
    ! is_member "$pid" || kill -TERM "$pid" 2>/dev/null || true
  done
  # The data are thrown away, so a member still busy (a leader handing over to peers that are
  # gone already takes seconds) is killed rather than waited for.
  wait_gone "$stop_timeout_s"
  for pid in "${pids[@]}"; do
    ! is_member "$pid" || kill -KILL "$pid" 2>/dev/null || true
  done
  wait_gone 2
  [[ -z $tmp ]] || rm -rf "$tmp"
  exit "$status"
}
trap cleanup EXIT
trap 'echo "etcd_baseline: interrupted" >&2; exit 130' INT
trap 'echo "etcd_baseline: terminated" >&2; exit 143' TERM

# What the run saw: CPUs, load average and, where the kernel has it, the share of the last 60 s in
# which some task waited for a CPU (PSI) — the figures move with both.
machine_state() {
  local state
  state="load average $(cut -d' ' -f1-3 /proc/loadavg)"
  if [[ -r /proc/pressure/cpu ]]; then
    state+=", CPU pressure $(sed -n 's/^some .*avg60=\([0-9.]*\).*/\1/p' /proc/pressure/cpu)% (some, 60 s)"
  fi
  echo "$state"
}

echo "etcd baseline: $(nproc) CPUs, $(machine_state) (nothing pinned)"

"$source_dir/scripts/deps.sh" bench ||
  die "the etcd baseline needs Debian's etcd-server, etcd-client, golang-go and golang-etcd-server-dev (see above)"

# The driver: etcd's own Go client, which Debian ships as source; built offline in GOPATH mode.
mkdir -p "$build_dir/etcd"
driver="$build_dir/etcd/etcd_bench"
echo "etcd baseline: building $driver"
GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE="$build_dir/etcd/gocache" GOFLAGS='' \
  go build -o "$driver" "$here/etcd_bench.go" || die "cannot build the Go driver $here/etcd_bench.go"

# Something already listening on a member's port (a member left over from an earlier run?) would
# make etcd fail to bind, or worse, be measured instead.
for address in "${addresses[@]}"; do
  for port in "$client_port" "$peer_port"; do
    if (exec 3<>"/dev/tcp/$address/$port") 2>/dev/null; then
      die "$address:$port is already in use (an etcd left running? see: ss -ltnp | grep $address)"
    fi
  done
done

tmp=$(mktemp -d -t dtu-etcd-bench.XXXXXX)
initial_cluster=
endpoints=
for i in "${!addresses[@]}"; do
  initial_cluster+="${initial_cluster:+,}m$i=http://${addresses[$i]}:$peer_port"
  endpoints+="${endpoints:+,}${addresses[$i]}:$client_port"
done
for i in "${!addresses[@]}"; do
  address=${addresses[$i]}
  etcd --name "m$i" --data-dir "$tmp/m$i.etcd" \
    --listen-client-urls "http://$address:$client_port" \
    --advertise-client-urls "http://$address:$client_port" \
    --listen-peer-urls "http://$address:$peer_port" \
    --initial-advertise-peer-urls "http://$address:$peer_port" \
    --initial-cluster "$initial_cluster" --initial-cluster-state new --initial-cluster-token "dtu-bench-$$" \
    --logger=zap --log-outputs="$tmp/m$i.log" </dev/null >>"$tmp/m$i.log" 2>&1 &
  pids+=($!)
done
# The driver kills the leader on purpose: no "Killed" job notice for it.
disown -a

echo "etcd baseline: waiting for the cluster $endpoints to be healthy"
healthy=0
deadline=$((SECONDS + health_timeout_s))
while ((SECONDS < deadline)); do
  for j in "${!pids[@]}"; do
    is_starting_member "${pids[$j]}" || die "etcd member m$j (${addresses[$j]}) exited while starting"
  done
  if ETCDCTL_API=3 etcdctl --endpoints="$endpoints" --dial-timeout=1s --command-timeout=2s \
    endpoint health >/dev/null 2>&1; then
    healthy=1
    break
  fi
  sleep 0.5
done
((healthy)) || die "the cluster $endpoints was not healthy within ${health_timeout_s} s"

mkdir -p "$out_dir"
rm -f "$out"  # a stale file must not pass for this run's figures
pid_list=$(IFS=,; echo "${pids[*]}")
# In the background, so that a signal to this script is handled at once (bash runs traps only
# between commands, but `wait` returns to them).
"$driver" -endpoints "$endpoints" -pids "$pid_list" -out "$out" -sync-dir "$tmp" \
  -duration "${ETCD_BENCH_DURATION:-5s}" -samples "${ETCD_BENCH_SAMPLES:-1000}" </dev/null &
driver_pid=$!
wait "$driver_pid" || die "the driver could not complete its workloads"
driver_pid=

echo "etcd baseline: done; $(machine_state)"
