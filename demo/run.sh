#!/usr/bin/env bash
# The dtubroker demo: a group of three device managers (m1, m2, m3 on 127.0.0.2–4, one mesh link
# per pair) and two desktop-unit agents with the simulated USB backend (demo/sim-devices.json: a
# printer and a printer/scanner/storage device each), dtu-demo-1 at m1 and dtu-demo-2 at m2. It
# shows the group and the device table, plugs a smart-card reader in at run time, prints a page
# in-band with dtu-unit, then lets a sample service at m3 — a server with no DTU of its own — find
# a printer on a remote DTU, lease it through the DTU's manager, print a test page and release
# it. Then a failover: m3 streams a 4 MB job to dtu-demo-1's printer, m1 (the DTU's manager) is
# killed with SIGKILL halfway, dtu-demo-1 re-homes to m2, m2 adopts the lease from its signed state
# token, and the job completes byte-exact; m1 is restarted and rejoins. Last, printing through
# CUPS: a private cupsd (its own config dir and socket, run as an ordinary process) with the `dtu`
# backend, using m3 as its manager, lists the group's printers (lpinfo -v), gets a queue on
# dtu-demo-2's printer by serial number, and prints a file to it with lp. It keeps running until
# Ctrl-C, which stops everything it started.
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
DTU2=dtu-demo-2
MESH_PORT=4720
declare -A MANAGER_IPS=([m1]=127.0.0.2 [m2]=127.0.0.3 [m3]=127.0.0.4)
SETTLE_SECONDS=10

devmgr=$BUILD/devmgr/devmgr
agent=$BUILD/dtu-agent/dtu-agent
simctl=$BUILD/dtu-agent/dtu-simctl
ctl=$BUILD/services/devmgrctl
unit=$BUILD/services/dtu-unit
sample=$BUILD/services/dtu-sample-service
backend=$BUILD/cups/backend/dtu
for program in "$devmgr" "$agent" "$simctl" "$ctl" "$unit" "$sample" "$backend"; do
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

step "keys: a site DTU key and a group key for the managers, each DTU's own key derived from the site key"
"$ctl" keygen --out "$run/site-dtu.key"
"$ctl" keygen --out "$run/group.key"
"$ctl" keygen --dtu "$DTU" --site-key "$run/site-dtu.key" --out "$run/$DTU.key"
"$ctl" keygen --dtu "$DTU2" --site-key "$run/site-dtu.key" --out "$run/$DTU2.key"

step "the group list: m1, m2, m3, each with its mesh address"
jq -n --arg port "$MESH_PORT" '{members: [
  {id: "m1", address: "127.0.0.2:\($port)"},
  {id: "m2", address: "127.0.0.3:\($port)"},
  {id: "m3", address: "127.0.0.4:\($port)"}]}' | tee "$run/group.json"

step "devmgr m1, m2, m3 on 127.0.0.2-4, all at once (DTU ports chosen by the kernel)"
for m in m1 m2 m3; do
  # m3's socket is open to every local user: CUPS's backend, which runs as lp, prints through it.
  mode=0660
  [[ $m == m3 ]] && mode=0666
  setsid "$devmgr" --id "$m" --dtu-listen "${MANAGER_IPS[$m]}:0" --socket "$run/$m.sock" --socket-mode "$mode" \
    --site-dtu-key "$run/site-dtu.key" --group "$run/group.json" --group-key "$run/group.key" 2>"$run/$m.log" &
  pids+=($!)
done
for m in m1 m2 m3; do
  wait_until "$SETTLE_SECONDS" grep -qs ' listening ' "$run/$m.log" || fail "devmgr $m did not start"
done
address=$(grep -o 'dtu=[0-9.]*:[0-9]*' "$run/m1.log" | head -n1 | cut -d= -f2)
address2=$(grep -o 'dtu=[0-9.]*:[0-9]*' "$run/m2.log" | head -n1 | cut -d= -f2)
peers_up() { [[ $("$ctl" --socket "$run/$1.sock" group --json 2>/dev/null | jq '[.members[] | select(.state == "up")] | length') == 2 ]]; }
for m in m1 m2 m3; do
  wait_until "$SETTLE_SECONDS" peers_up "$m" || fail "devmgr $m did not link up with both peers"
done
echo "m1 takes DTUs on $address, m2 on $address2; services use $run/m1.sock, m2.sock, m3.sock"

step "devmgrctl group (at m3): one authenticated link per pair, heartbeats both ways"
"$ctl" --socket "$run/m3.sock" group

step "dtu-agent $DTU at m1 and $DTU2 at m2, with the simulated USB backend (demo/sim-devices.json)"
setsid "$agent" --id "$DTU" --manager "$address" --manager "$address2" --key "$run/$DTU.key" --inband "$MANAGER_IP:0" \
  --backend sim --sim-devices demo/sim-devices.json --sim-control "$run/$DTU-sim.sock" 2>"$run/$DTU.log" &
pids+=($!)
setsid "$agent" --id "$DTU2" --manager "$address2" --manager "$address" --key "$run/$DTU2.key" --inband "127.0.0.3:0" \
  --backend sim --sim-devices demo/sim-devices.json --sim-control "$run/$DTU2-sim.sock" 2>"$run/$DTU2.log" &
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

step "devmgrctl devices --group (at m3, which has no DTU): every member answers for its own DTUs"
group_has_devices() { [[ $("$ctl" --socket "$run/m3.sock" devices --group --json 2>/dev/null | jq length) == 5 ]]; }
wait_until "$SETTLE_SECONDS" group_has_devices || fail "m3 did not list the 5 devices of the group"
"$ctl" --socket "$run/m3.sock" devices --group

step "a sample service at m3 (libdtu-client): printer finder group-wide, lease through the DTU's manager, test page in-band, release"
captured_hex() { "$simctl" --socket "$run/$1-sim.sock" captured "$2" 0x01 | jq -r .hex; }
declare -A before
for dtu in "$DTU" "$DTU2"; do
  for port in 1-1 1-2; do before[$dtu/$port]=$(captured_hex "$dtu" "$port"); done
done
test_page=$'\eEdtubroker test page: found group-wide by a finder at m3, leased through the DTU\'s manager, printed in-band.\r\n\f\eE'
printf '%s' "$test_page" >"$run/test-page.prn"
"$sample" --socket "$run/m3.sock" --finder '{"function": "printer"}' --page "$run/test-page.prn" |
  tee "$run/sample-service.out" || fail "the sample service failed"
# "allocated lease <id> on <dtu> <device> unit <n> ...": the printer it chose.
chosen_dtu=$(awk '$1 == "allocated" { print $5; exit }' "$run/sample-service.out")
chosen=$(awk '$1 == "allocated" { print $6; exit }' "$run/sample-service.out")
[[ -n $chosen && -n ${before[$chosen_dtu/$chosen]+set} ]] || fail "the sample service did not say which printer it leased"
expected=${before[$chosen_dtu/$chosen]}$(printf '%s' "$test_page" | od -An -v -tx1 | tr -d ' \n')
[[ $(captured_hex "$chosen_dtu" "$chosen") == "$expected" ]] ||
  fail "the simulated printer $chosen on $chosen_dtu did not receive the test page"
owner=$("$ctl" --socket "$run/m3.sock" devices --group --json | jq -r --arg t "$chosen_dtu" --arg d "$chosen" '.[] | select(.dtu == $t and .device == $d) | .owner')
echo "the simulated printer $chosen on $chosen_dtu (owned by $owner, not m3) received the ${#test_page}-byte test page; its units now:"
"$ctl" --socket "$run/m3.sock" devices --group --json |
  jq -r --arg t "$chosen_dtu" --arg d "$chosen" '.[] | select(.dtu == $t and .device == $d) | .units[] | "unit \(.unit) (\(.function)): \(.state)"'

step "failover: m3 streams a 4 MB job to $DTU's printer (1-1) in-band; m1, $DTU's manager, is killed halfway"
head -c 4000000 /dev/urandom >"$run/job.bin"
before_job=$(captured_hex "$DTU" 1-1)
{ head -c 2000000 "$run/job.bin"; sleep 3; tail -c +2000001 "$run/job.bin"; } |
  "$unit" --socket "$run/m3.sock" --dtu "$DTU" --device 1-1 --unit 0 --timeout-ms 20000 write &
job=$!
owned_by() { [[ $("$ctl" --socket "$run/m3.sock" devices --group --json 2>/dev/null |
  jq -r --arg t "$DTU" '[.[] | select(.dtu == $t) | .owner] | unique | join(",")') == "$1" ]]; }
allocated_on_m1() { "$ctl" --socket "$run/m1.sock" devices --json 2>/dev/null |
  jq -e '.[] | select(.device == "1-1") | .units[0].state == "allocated"' >/dev/null; }
wait_until "$SETTLE_SECONDS" allocated_on_m1 || fail "the job did not start"
sleep 1
kill -KILL "${pids[0]}"
killed_at=$(date +%s%N)
{ wait "${pids[0]}"; } 2>/dev/null || true
echo "m1 killed (SIGKILL); $DTU re-homes to the next manager of its list"
wait_until "$SETTLE_SECONDS" owned_by m2 || fail "$DTU did not re-home to m2"
rehomed_ms=$((($(date +%s%N) - killed_at) / 1000000))
echo "m3 sees $DTU owned by m2 after ${rehomed_ms} ms (polled every 100 ms); the job keeps streaming"
wait "$job" || fail "the job did not complete across the failover"
expected_job=$before_job$(od -An -v -tx1 "$run/job.bin" | tr -d ' \n')
[[ $(captured_hex "$DTU" 1-1) == "$expected_job" ]] || fail "the printer did not receive the job byte-exact"
echo "the printer received all 4,000,000 bytes, byte-exact; the lease was released through m2:"
"$ctl" --socket "$run/m3.sock" devices --group --json |
  jq -r --arg t "$DTU" '.[] | select(.dtu == $t and .device == "1-1") | "\(.dtu) \(.device) unit 0: \(.units[0].state), owner \(.owner)"'

step "m1 restarts and rejoins the group ($DTU stays with m2: nothing moves back on its own)"
setsid "$devmgr" --id m1 --dtu-listen "$address" --socket "$run/m1.sock" --metrics-listen 127.0.0.2:0 \
  --site-dtu-key "$run/site-dtu.key" --group "$run/group.json" --group-key "$run/group.key" 2>"$run/m1.log" &
pids[0]=$!
for m in m1 m2 m3; do
  wait_until "$SETTLE_SECONDS" peers_up "$m" || fail "devmgr $m did not link up with both peers after m1's restart"
done
"$ctl" --socket "$run/m1.sock" group

step "operations at m1: devmgrctl status, then group exec runs a verb on every manager at once"
"$ctl" --socket "$run/m1.sock" status || fail "devmgrctl status says the group is degraded"
"$ctl" --socket "$run/m1.sock" group exec reload || fail "group exec reload was not done on every manager"
"$ctl" --socket "$run/m1.sock" group exec diag --json |
  jq -r 'select(.event == "outcome" and .outcome == "done") | "\(.node): \(.result.summary)"'
metrics=$(grep -o 'metrics_listening.*listen=[0-9.]*:[0-9]*' "$run/m1.log" | grep -o '[0-9.]*:[0-9]*$' | head -n1)
echo "m1's Prometheus endpoint, http://$metrics/metrics (a few lines):"
exec 3<>"/dev/tcp/${metrics%:*}/${metrics#*:}"
printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3
grep -E '^dtubroker_(dtus|devices|peer_up)[ {]' <&3 || fail "m1's metrics endpoint did not answer"
exec 3<&-

step "print through CUPS at m3: a private cupsd (own config dir and socket) with the dtu backend"
# cupsd runs the backend as lp: lp must reach m3's socket (mode 0666 above) through $run.
chmod 711 "$run"
cups=$run/cups
mkdir -p "$cups"/{bin/backend,spool,cache,state,tmp,log}
for dir in cgi-bin daemon driver filter monitor notifier; do ln -s "/usr/lib/cups/$dir" "$cups/bin/$dir"; done
install -m 0755 "$backend" "$cups/bin/backend/dtu"
cat >"$cups/cupsd.conf" <<CONF
Listen $cups/cups.sock
Browsing Off
WebInterface No
LogLevel info
<Location />
  Order allow,deny
  Allow localhost
</Location>
CONF
cat >"$cups/cups-files.conf" <<CONF
ServerRoot $cups
ServerBin $cups/bin
DataDir /usr/share/cups
RequestRoot $cups/spool
CacheDir $cups/cache
StateDir $cups/state
TempDir $cups/tmp
ErrorLog $cups/log/error_log
AccessLog $cups/log/access_log
PageLog $cups/log/page_log
SystemGroup root
User lp
Group lp
Sandboxing Relaxed
# Backends get no other environment; here (not in cupsd.conf) it reaches lpinfo's runs too.
SetEnv DTUBROKER_SOCKET $run/m3.sock
CONF
setsid cupsd -f -c "$cups/cupsd.conf" -s "$cups/cups-files.conf" 2>"$run/cupsd.log" &
pids+=($!)
lpc() { CUPS_SERVER=$cups/cups.sock "$@"; }
# `lpstat -r` exits 0 also when it says "scheduler is not running": read what it says.
cupsd_up() { [[ $(lpc env LC_ALL=C lpstat -r 2>/dev/null) == "scheduler is running" ]]; }
wait_until "$SETTLE_SECONDS" cupsd_up || fail "cupsd did not start"
echo "lpinfo -v (the dtu backend asks m3, which finds the printers group-wide):"
lpc lpinfo --include-schemes dtu -v | tee "$run/lpinfo.out"
uri=$(awk -v dtu="$DTU2" '$2 ~ "^dtu://" dtu "/sn=PRN0001/" { print $2; exit }' "$run/lpinfo.out")
[[ -n $uri ]] || fail "lpinfo -v did not list $DTU2's printer"
lpc lpadmin -p dtu-demo-printer -E -v "$uri" -m raw 2>/dev/null || fail "lpadmin could not add the queue"
echo "queue dtu-demo-printer on $uri (a raw queue: the file goes to the printer as it is)"
job_text=$'dtubroker through CUPS: lp at m3 -> cupsd -> dtu backend -> lease through the DTU\'s manager -> in-band.\r\n\f'
printf '%s' "$job_text" >"$run/cups-job.prn"
before_cups=$(captured_hex "$DTU2" 1-1)
lpc lp -d dtu-demo-printer "$run/cups-job.prn"
job_done() { [[ -z $(lpc lpstat -o dtu-demo-printer 2>/dev/null) ]]; }
wait_until 30 job_done || fail "the CUPS job did not complete: $(lpc lpstat -l -o dtu-demo-printer 2>&1)"
expected=$before_cups$(od -An -v -tx1 "$run/cups-job.prn" | tr -d ' \n')
[[ $(captured_hex "$DTU2" 1-1) == "$expected" ]] || fail "$DTU2's printer did not receive the CUPS job byte-exact"
lpc lpstat -W completed -o dtu-demo-printer
echo "$DTU2's printer received the ${#job_text}-byte job from CUPS, byte-exact"

if [[ -n $ONCE ]]; then
  step "demo passed"
  exit 0
fi

cat <<TEXT

The demo keeps running. In another terminal:
  $ctl --socket $run/m1.sock devices [--json]     (m2.sock, m3.sock; devices --group; group)
  $simctl --socket $run/$DTU-sim.sock list | unplug 1-2 | plug 1-2
  echo hello | $unit --socket $run/m1.sock --dtu $DTU --device 1-1 --unit 0 write
  $unit --socket $run/m1.sock --dtu $DTU --device 1-1 --unit 0 device-id
  $sample --socket $run/m1.sock            (or --hold, and watch: $ctl --socket $run/m1.sock leases)
  CUPS_SERVER=$cups/cups.sock lp -d dtu-demo-printer FILE    (and lpstat -p, lpinfo -v)
Logs: $run/m1.log, m2.log, m3.log, $run/$DTU.log, $run/$DTU2.log, $cups/log/error_log
Press Ctrl-C to stop.
TEXT
while true; do
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null || fail "a demo process exited"; done
  sleep 1
done
