#!/usr/bin/env bash
# Installs the Debian 12 packages dtubroker needs, only when some are missing.
#
#   scripts/deps.sh [GROUP...]     GROUP: build, test, format, bench (default: all but bench)
#
# Nothing missing: says so and exits at once (one dpkg-query, no apt-get update).
# Something missing, as root: apt-get update, then installs only the missing packages,
# non-interactively (CI has no stdin). Not root: prints the one command to run and exits 1.
set -euo pipefail

declare -A groups=(
  # clang + libclang-rt-14-dev: the libFuzzer runtime for `make fuzz-smoke`.
  # dpkg-dev (dpkg-shlibdeps) and file: `make package` works out the packages' Depends with them.
  [build]="build-essential cmake pkg-config g++ clang libclang-rt-14-dev libasio-dev nlohmann-json3-dev
           libssl-dev libsimdjson-dev doctest-dev libcli11-dev libusb-1.0-0-dev libsystemd-dev libcups2-dev dpkg-dev file"
  # lintian: the packaging test checks the .deb packages with it.
  # systemd: systemd-analyze, -sysusers and -tmpfiles check the packaged units offline
  # (tests/integration/systemd_units_test.cpp); installing it does not make it PID 1.
  [test]="umockdev libumockdev-dev jq faketime iproute2 nftables cups cups-client cups-daemon procps psmisc
          lintian systemd"
  [format]="clang-format"
  # Only `make bench`: the etcd baseline (tests/bench/etcd/) runs a 3-member etcd cluster and drives it
  # with etcd's own Go client, which Debian packages as Go source (built offline, GOPATH mode).
  [bench]="etcd-server etcd-client golang-go golang-etcd-server-dev"
)
# The default: everything but bench, which `make bench` asks for by name.
all_groups=(build test format)

selected=("$@")
((${#selected[@]})) || selected=("${all_groups[@]}")
wanted=()
for group in "${selected[@]}"; do
  if [[ -z ${groups[$group]+set} ]]; then
    echo "deps.sh: unknown group '$group' (known: ${!groups[*]})" >&2
    exit 2
  fi
  read -r -a pkgs <<<"${groups[$group]//$'\n'/ }"
  wanted+=("${pkgs[@]}")
done

# One dpkg-query for all of them; a package dpkg has never heard of prints nothing (and is missing).
declare -A installed=()
while read -r pkg status; do
  [[ $status == ii* ]] && installed[$pkg]=1
done < <(dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' "${wanted[@]}" 2>/dev/null || true)

missing=()
for pkg in "${wanted[@]}"; do
  [[ -n ${installed[$pkg]+set} ]] || missing+=("$pkg")
done

if ((${#missing[@]} == 0)); then
  echo "deps.sh: all ${#wanted[@]} packages present (${selected[*]})"
  exit 0
fi

apt_install="apt-get install -y --no-install-recommends ${missing[*]}"
if ((EUID != 0)); then
  echo "deps.sh: missing ${missing[*]}; as root, run:" >&2
  echo "  sudo sh -c 'apt-get update && DEBIAN_FRONTEND=noninteractive $apt_install'" >&2
  exit 1
fi

# apt's chatter goes to a log that is shown only when something fails.
log=$(mktemp -t dtu-deps.XXXXXX)
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update && $apt_install; } </dev/null >"$log" 2>&1; then
  cat "$log" >&2
  echo "deps.sh: failed to install ${missing[*]}" >&2
  exit 1
fi
echo "deps.sh: installed ${missing[*]}"
