#!/usr/bin/env bash
# The dtubroker demo: a device manager and a desktop-unit agent with the simulated USB backend
# (demo/sim-devices.json: a printer and a printer/scanner/storage device) on loopback. It shows
# the device table, plugs a smart-card reader in at run time, shows the table again, prints a page
# in-band with dtu-unit, lets a sample service find a printer, lease it, print a test page and
# release it, then keeps running until Ctrl-C, which stops everything it started.
#
#   make demo          # or: demo/run.sh       (runs until Ctrl-C)
#   make demo ONCE=1   # or: ONCE=1 demo/run.sh (one pass; exit 0 only if every step worked)
#
# BUILD (default: build) is the CMake tree holding the programs.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
ONCE=${ONCE:-}
MANAGER_IP=127.0.0.2
DTU=dtu-demo-1
SETTLE_SECONDS=10

devmgr=$BUILD/devmgr/devmgr
agent=$BUILD/dtu-agent/dtu-agent
simctl=$BUILD/dtu-agent/dtu-simctl
ctl=$BUILD/services/devmgrctl
unit=$BUILD/services/dtu-unit
sample=$BUILD/services/dtu-sample-service
for program in "$devmgr" "$agent" "$simctl" "$ctl" "$unit" "$sample"; do
  [[ -x $program ]] || { echo "demo: $program is missing; run 'make build' first" >&2; exit 1; }
done

run=$(mktemp -d "${TMPDIR:-/tmp}/dtubroker-demo.XXXXXX")
# The daemons run in sessions of their own (setsid), so Ctrl-C reaches only this script, which
# then stops them in order.
pids=()
stop_all() {
  local status=$?
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$run"
  exit "$status"
}
trap stop_all EXIT
trap 'echo; echo "demo: stopping"; exit 0' INT TERM

step() { printf '\n== %s\n' "$*"; }
fail() { echo "demo: FAILED: $*" >&2; for log in "$run"/*.log; do echo "--- $log" >&2; tail -n 20 "$log" >&2; done; exit 1; }

# wait_until SECONDS COMMAND...: retries COMMAND every 0.1 s until it succeeds or time runs out.
wait_until() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
}

step "keys: a site DTU key for the manager, and the DTU's own key derived from it"
"$ctl" keygen --out "$run/site-dtu.key"
"$ctl" keygen --dtu "$DTU" --site-key "$run/site-dtu.key" --out "$run/$DTU.key"

step "devmgr m1 on $MANAGER_IP (DTU port chosen by the kernel)"
setsid "$devmgr" --id m1 --dtu-listen "$MANAGER_IP:0" --socket "$run/m1.sock" \
  --site-dtu-key "$run/site-dtu.key" 2>"$run/m1.log" &
pids+=($!)
wait_until "$SETTLE_SECONDS" grep -qs ' listening ' "$run/m1.log" || fail "devmgr did not start"
address=$(grep -o 'dtu=[0-9.]*:[0-9]*' "$run/m1.log" | head -n1 | cut -d= -f2)
echo "listening for DTUs on $address, services on $run/m1.sock"

step "dtu-agent $DTU with the simulated USB backend (demo/sim-devices.json)"
setsid "$agent" --id "$DTU" --manager "$address" --key "$run/$DTU.key" --inband "$MANAGER_IP:0" \
  --backend sim --sim-devices demo/sim-devices.json --sim-control "$run/$DTU-sim.sock" 2>"$run/$DTU.log" &
pids+=($!)

device_count() { "$ctl" --socket "$run/m1.sock" devices --json 2>/dev/null | jq length; }
has_devices() { [[ $(device_count) == "$1" ]]; }
wait_until "$SETTLE_SECONDS" has_devices 2 || fail "the manager did not list the DTU's 2 devices"

step "devmgrctl devices"
"$ctl" --socket "$run/m1.sock" devices

step "plug a smart-card reader into $DTU at run time (dtu-simctl plug 1-3)"
"$simctl" --socket "$run/$DTU-sim.sock" plug 1-3 >/dev/null
wait_until "$SETTLE_SECONDS" has_devices 3 || fail "the plugged reader did not reach the manager"
"$ctl" --socket "$run/m1.sock" devices

step "print in-band: dtu-unit leases the printer (1-1, unit 0) through m1 and writes straight to the DTU"
page=$'Hello from dtubroker: this page went service -> DTU over TLS keyed by the lease token.\f'
printf '%s' "$page" | "$unit" --socket "$run/m1.sock" --dtu "$DTU" --device 1-1 --unit 0 write ||
  fail "dtu-unit could not print"
printed=$("$simctl" --socket "$run/$DTU-sim.sock" captured 1-1 0x01 | jq -r .hex)
expected=$(printf '%s' "$page" | od -An -v -tx1 | tr -d ' \n')
[[ $printed == "$expected" ]] || fail "the simulated printer did not receive the page"
echo "the simulated printer received ${#page} bytes, exactly the page; the lease was released:"
"$ctl" --socket "$run/m1.sock" devices --json | jq -r '.[] | select(.device == "1-1") | .units[0] | "unit 0: \(.state)"'

step "a sample service (dtu-sample-service, libdtu-client): printer finder, lease, test page in-band, release"
captured_hex() { "$simctl" --socket "$run/$DTU-sim.sock" captured "$1" 0x01 | jq -r .hex; }
declare -A before
for port in 1-1 1-2; do before[$port]=$(captured_hex "$port"); done
test_page=$'\eEdtubroker test page: found by a finder, leased through m1, printed in-band by dtu-sample-service.\r\n\f\eE'
printf '%s' "$test_page" >"$run/test-page.prn"
"$sample" --socket "$run/m1.sock" --finder '{"function": "printer"}' --page "$run/test-page.prn" |
  tee "$run/sample-service.out" || fail "the sample service failed"
# "allocated lease <id> on <dtu> <device> unit <n> ...": the printer it chose.
chosen=$(awk '$1 == "allocated" { print $6; exit }' "$run/sample-service.out")
[[ -n $chosen && -n ${before[$chosen]+set} ]] || fail "the sample service did not say which printer it leased"
expected=${before[$chosen]}$(printf '%s' "$test_page" | od -An -v -tx1 | tr -d ' \n')
[[ $(captured_hex "$chosen") == "$expected" ]] || fail "the simulated printer $chosen did not receive the test page"
echo "the simulated printer $chosen received the ${#test_page}-byte test page; its units now:"
"$ctl" --socket "$run/m1.sock" devices --json |
  jq -r --arg d "$chosen" '.[] | select(.device == $d) | .units[] | "unit \(.unit) (\(.function)): \(.state)"'

if [[ -n $ONCE ]]; then
  step "demo passed"
  exit 0
fi

cat <<TEXT

The demo keeps running. In another terminal:
  $ctl --socket $run/m1.sock devices [--json]
  $simctl --socket $run/$DTU-sim.sock list | unplug 1-2 | plug 1-2
  echo hello | $unit --socket $run/m1.sock --dtu $DTU --device 1-1 --unit 0 write
  $unit --socket $run/m1.sock --dtu $DTU --device 1-1 --unit 0 device-id
  $sample --socket $run/m1.sock            (or --hold, and watch: $ctl --socket $run/m1.sock leases)
Logs: $run/m1.log, $run/$DTU.log
Press Ctrl-C to stop.
TEXT
while true; do
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null || fail "a demo process exited"; done
  sleep 1
done
