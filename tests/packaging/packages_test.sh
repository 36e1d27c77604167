#!/usr/bin/env bash
# The Debian packages, checked as an operator would check them before installing: cpack builds
# dtubroker-devmgr, dtubroker-agent and dtubroker-services from the build tree into a temporary
# directory; then dpkg-deb says what each holds (paths, modes, owners, conffiles, control fields),
# lintian judges them, the packages are unpacked into a throw-away root whose programs must start
# (their shared libraries resolve) and whose maintainer scripts must create the users there, and
# `cmake --install --prefix` must keep every file under its prefix.
#
#   packages_test.sh BUILD_DIR SOURCE_DIR VERSION      (VERSION: the packages' own, e.g. 0.1.0-1)
#
# Prints one line per check and "N passed, N failed" last; exits 1 when a check failed. Runs as
# root: the maintainer scripts' systemd-tmpfiles gives files to the users they create.
set -euo pipefail

if (($# != 3)); then
  echo "usage: $0 BUILD_DIR SOURCE_DIR VERSION" >&2
  exit 2
fi
build=$1
source=$2
version=$3

for tool in cpack dpkg-deb dpkg-shlibdeps lintian readelf systemd-sysusers systemd-tmpfiles; do
  if ! command -v "$tool" >/dev/null; then
    echo "packages_test: $tool is missing (scripts/deps.sh installs it)" >&2
    exit 1
  fi
done
if ((EUID != 0)); then
  echo "packages_test: run as root (the maintainer scripts' systemd-tmpfiles changes file owners)" >&2
  exit 1
fi

work=$(mktemp -d -t dtu-packages.XXXXXX)
trap 'rm -rf "$work"' EXIT
arch=$(dpkg --print-architecture)

passed=0
failed=0
# check DESCRIPTION COMMAND...: runs COMMAND; its output is shown only when it fails.
check() {
  local what=$1
  shift
  if "$@" >"$work/check.out" 2>&1; then
    passed=$((passed + 1))
    echo "ok: $what"
  else
    failed=$((failed + 1))
    echo "FAILED: $what"
    sed 's/^/    /' "$work/check.out"
  fi
}

# --- build ---------------------------------------------------------------------------------------
started=$SECONDS
if ! cpack --config "$build/CPackConfig.cmake" -B "$work/out" >"$work/cpack.log" 2>&1; then
  cat "$work/cpack.log"
  echo "packages_test: cpack failed (above)" >&2
  exit 1
fi
echo "cpack built the packages in $((SECONDS - started)) s"

packages=(dtubroker-devmgr dtubroker-agent dtubroker-services)
deb() { echo "$work/out/${1}_${version}_${arch}.deb"; }

# What each package holds besides directories: "mode path", and nothing else.
declare -A expected
expected[dtubroker-devmgr]="
-rwxr-xr-x ./usr/sbin/devmgr
-rwxr-xr-x ./usr/bin/devmgrctl
-rw-r--r-- ./etc/dtubroker/devmgr.json
-rw-r--r-- ./etc/dtubroker/group.json
-rw-r--r-- ./etc/dtubroker/policy.json
-rw-r--r-- ./lib/systemd/system/devmgr.service
-rw-r--r-- ./usr/lib/sysusers.d/dtubroker.conf
-rw-r--r-- ./usr/lib/tmpfiles.d/dtubroker.conf
-rw-r--r-- ./usr/share/man/man8/devmgr.8.gz
-rw-r--r-- ./usr/share/man/man8/devmgrctl.8.gz
-rw-r--r-- ./usr/share/doc/dtubroker-devmgr/copyright
-rw-r--r-- ./usr/share/doc/dtubroker-devmgr/changelog.Debian.gz"
expected[dtubroker-agent]="
-rwxr-xr-x ./usr/sbin/dtu-agent
-rwxr-xr-x ./usr/bin/dtu-simctl
-rw-r--r-- ./etc/dtubroker/dtu-agent.json
-rw-r--r-- ./lib/systemd/system/dtu-agent.service
-rw-r--r-- ./lib/udev/rules.d/70-dtubroker.rules
-rw-r--r-- ./usr/lib/sysusers.d/dtu-agent.conf
-rw-r--r-- ./usr/lib/tmpfiles.d/dtu-agent.conf
-rw-r--r-- ./usr/share/man/man8/dtu-agent.8.gz
-rw-r--r-- ./usr/share/man/man1/dtu-simctl.1.gz
-rw-r--r-- ./usr/share/doc/dtubroker-agent/copyright
-rw-r--r-- ./usr/share/doc/dtubroker-agent/changelog.Debian.gz"
# The backend is 0755 on purpose: CUPS runs a backend of that mode as lp, one of mode 0700 as root.
expected[dtubroker-services]="
-rwxr-xr-x ./usr/lib/cups/backend/dtu
-rwxr-xr-x ./usr/sbin/dtu-print
-rwxr-xr-x ./usr/bin/dtu-unit
-rwxr-xr-x ./usr/bin/dtu-sample-service
-rw-r--r-- ./usr/share/man/man7/dtu-cups-backend.7.gz
-rw-r--r-- ./usr/share/man/man8/dtu-print.8.gz
-rw-r--r-- ./usr/share/man/man1/dtu-unit.1.gz
-rw-r--r-- ./usr/share/man/man1/dtu-sample-service.1.gz
-rw-r--r-- ./usr/share/doc/dtubroker-services/copyright
-rw-r--r-- ./usr/share/doc/dtubroker-services/changelog.Debian.gz"

declare -A conffiles
conffiles[dtubroker-devmgr]="/etc/dtubroker/devmgr.json
/etc/dtubroker/group.json
/etc/dtubroker/policy.json"
conffiles[dtubroker-agent]="/etc/dtubroker/dtu-agent.json"
conffiles[dtubroker-services]=""

# Each installed file that comes from packaging/ unchanged (man pages gunzipped): "path source".
declare -A sources
sources[dtubroker-devmgr]="
etc/dtubroker/devmgr.json packaging/config/devmgr.json
etc/dtubroker/group.json packaging/config/group.json
etc/dtubroker/policy.json packaging/policy/policy.json
lib/systemd/system/devmgr.service packaging/systemd/devmgr.service
usr/lib/sysusers.d/dtubroker.conf packaging/systemd/dtubroker.sysusers
usr/lib/tmpfiles.d/dtubroker.conf packaging/systemd/dtubroker.tmpfiles
usr/share/man/man8/devmgr.8.gz packaging/man/devmgr.8
usr/share/man/man8/devmgrctl.8.gz packaging/man/devmgrctl.8
usr/share/doc/dtubroker-devmgr/copyright packaging/deb/copyright
usr/share/doc/dtubroker-devmgr/changelog.Debian.gz packaging/deb/changelog"
sources[dtubroker-agent]="
etc/dtubroker/dtu-agent.json packaging/config/dtu-agent.json
lib/systemd/system/dtu-agent.service packaging/systemd/dtu-agent.service
lib/udev/rules.d/70-dtubroker.rules packaging/udev/70-dtubroker.rules
usr/lib/sysusers.d/dtu-agent.conf packaging/systemd/dtu-agent.sysusers
usr/lib/tmpfiles.d/dtu-agent.conf packaging/systemd/dtu-agent.tmpfiles
usr/share/man/man8/dtu-agent.8.gz packaging/man/dtu-agent.8
usr/share/man/man1/dtu-simctl.1.gz packaging/man/dtu-simctl.1
usr/share/doc/dtubroker-agent/copyright packaging/deb/copyright
usr/share/doc/dtubroker-agent/changelog.Debian.gz packaging/deb/changelog"
sources[dtubroker-services]="
usr/share/man/man7/dtu-cups-backend.7.gz packaging/man/dtu-cups-backend.7
usr/share/man/man8/dtu-print.8.gz packaging/man/dtu-print.8
usr/share/man/man1/dtu-unit.1.gz packaging/man/dtu-unit.1
usr/share/man/man1/dtu-sample-service.1.gz packaging/man/dtu-sample-service.1
usr/share/doc/dtubroker-services/copyright packaging/deb/copyright
usr/share/doc/dtubroker-services/changelog.Debian.gz packaging/deb/changelog"

# Each package's Depends must name these (its shared libraries, the sysusers provider).
declare -A depends
depends[dtubroker-devmgr]="libc6 libstdc++6 libssl3 libsimdjson14 libsystemd0 systemd"
depends[dtubroker-agent]="libc6 libstdc++6 libssl3 libsimdjson14 libsystemd0 libusb-1.0-0 systemd"
depends[dtubroker-services]="libc6 libstdc++6 libssl3 libsimdjson14 libcups2"

# --- helpers: each prints what is wrong and returns 1 ---------------------------------------------

# The package's non-directory entries, "mode path", sorted.
contents() { dpkg-deb -c "$(deb "$1")" | awk '$1 !~ /^d/ { print $1, $6 }' | sort; }

holds_exactly_expected_files() {
  diff <(sed '/^$/d' <<<"${expected[$1]}" | sort) <(contents "$1")
}

everything_owned_by_root() {
  local others
  others=$(dpkg-deb -c "$(deb "$1")" | awk '$2 != "root/root"')
  [[ -z $others ]] || { echo "not owned by root/root:"; echo "$others"; return 1; }
}

directories_are_0755() {
  local odd
  odd=$(dpkg-deb -c "$(deb "$1")" | awk '$1 ~ /^d/ && $1 != "drwxr-xr-x"')
  [[ -z $odd ]] || { echo "directories not drwxr-xr-x:"; echo "$odd"; return 1; }
}

files_match_sources() {
  local path src bad=0
  while read -r path src; do
    [[ -n $path ]] || continue
    if [[ $path == *.gz ]]; then
      gzip -t "$work/root/$path" || { echo "$path: not a valid gzip file"; bad=1; continue; }
      cmp <(gzip -dc "$work/root/$path") "$source/$src" || bad=1
    else
      cmp "$work/root/$path" "$source/$src" || bad=1
    fi
  done <<<"${sources[$1]}"
  return $bad
}

conffiles_list_the_etc_files() {
  local listed
  listed=$(dpkg-deb -I "$(deb "$1")" conffiles 2>/dev/null || true)
  diff <(sed '/^$/d' <<<"${conffiles[$1]}" | sort) <(sed '/^$/d' <<<"$listed" | sort)
}

# Maintainer scripts: present in packaging/deb/<package>/, shipped unchanged and executable.
maintainer_scripts_shipped() {
  local script bad=0
  for script in postinst postrm preinst prerm; do
    if [[ -f $source/packaging/deb/$1/$script ]]; then
      [[ -x $work/control/$1/$script ]] || { echo "$script: not executable"; bad=1; }
      cmp "$work/control/$1/$script" "$source/packaging/deb/$1/$script" || bad=1
    elif [[ -e $work/control/$1/$script ]]; then
      echo "$script: shipped, but packaging/deb/$1/ has none"
      bad=1
    fi
  done
  return $bad
}

control_fields_sane() {
  local pkg=$1 file field value bad=0
  file=$(deb "$pkg")
  for field in Package Version Architecture Maintainer Section Priority Description Depends; do
    value=$(dpkg-deb -f "$file" "$field")
    [[ -n $value ]] || { echo "$field: empty"; bad=1; }
  done
  [[ $(dpkg-deb -f "$file" Package) == "$pkg" ]] || { echo "Package: not $pkg"; bad=1; }
  [[ $(dpkg-deb -f "$file" Version) == "$version" ]] || { echo "Version: not $version"; bad=1; }
  [[ $(dpkg-deb -f "$file" Architecture) == "$arch" ]] || { echo "Architecture: not $arch"; bad=1; }
  # A synopsis line and a long description of several lines.
  (($(dpkg-deb -f "$file" Description | wc -l) >= 5)) || { echo "Description: no long text"; bad=1; }
  return $bad
}

# Depends: names each expected package, only well-formed package names, none of ours.
depends_sane() {
  local pkg=$1 line want names
  line=$(dpkg-deb -f "$(deb "$pkg")" Depends)
  echo "Depends: $line"
  names=$(tr ',|' '\n' <<<"$line" | sed -E 's/^ *//; s/ *\(.*//; s/ *$//')
  for want in ${depends[$pkg]}; do
    grep -qx "$want" <<<"$names" || { echo "Depends: $want missing"; return 1; }
  done
  if grep -vqE '^[a-z0-9][a-z0-9.+-]+$' <<<"$names"; then
    echo "Depends: a malformed package name"
    return 1
  fi
  ! grep -q '^dtubroker-' <<<"$names" || { echo "Depends: on our own package"; return 1; }
}

binaries_stripped() {
  local mode path bad=0
  while read -r mode path; do
    [[ $mode == -rwx* ]] || continue
    if readelf -S "$work/root/$path" | grep -qE '\.debug_(info|line)|\.symtab'; then
      echo "$path: not stripped"
      bad=1
    fi
  done < <(contents "$1")
  return $bad
}

no_path_in_two_packages() {
  local dups
  dups=$(for pkg in "${packages[@]}"; do contents "$pkg"; done | awk '{ print $2 }' | sort | uniq -d)
  [[ -z $dups ]] || { echo "in more than one package:"; echo "$dups"; return 1; }
}

libraries_resolve() {
  local mode path missing bad=0
  for pkg in "${packages[@]}"; do
    while read -r mode path; do
      [[ $mode == -rwx* ]] || continue
      missing=$(ldd "$work/root/$path" | grep 'not found' || true)
      [[ -z $missing ]] || { echo "$path: $missing"; bad=1; }
    done < <(contents "$pkg")
  done
  return $bad
}

# run_ok EXPECTED_OUTPUT PROGRAM ARGS...: the unpacked program exits 0 and prints EXPECTED_OUTPUT.
run_ok() {
  local want=$1 out
  shift
  out=$(timeout 20 "$work/root/$1" "${@:2}" 2>&1) || { echo "$1 ${*:2}: exit $?"; echo "$out"; return 1; }
  grep -qF -- "$want" <<<"$out" || { echo "$1 ${*:2}: no '$want' in:"; echo "$out"; return 1; }
}

# lintian (with its informational tags): no error, and every warning or info line one of these,
# each with its reason ("PACKAGE: TAG CONTEXT", extended regular expressions).
accepted_lintian=(
  # Not uploaded to Debian: there is no ITP bug for the first changelog entry to close.
  'dtubroker-[a-z]+: initial-upload-closes-no-bugs '
  # CPack strips with plain strip(1), which keeps .comment (the compiler's version, a few bytes).
  'dtubroker-[a-z]+: binary-has-unneeded-section \.comment '
  # systemd only: the units rely on Type=notify, the watchdog and sandboxing no init.d script has.
  'dtubroker-[a-z]+: package-supports-alternative-init-but-no-init\.d-script '
  # Not words but pieces of strings the compiler merged ("expected 64 hex characte|rs", "lengH").
  'dtubroker-[a-z]+: spelling-error-in-binary (characte character|lengH length) '
)
lintian_clean() {
  local out line pattern accepted bad=0
  out=$(lintian --display-info --tag-display-limit 0 \
          "$(deb dtubroker-devmgr)" "$(deb dtubroker-agent)" "$(deb dtubroker-services)" 2>&1) || true
  while IFS= read -r line; do
    [[ $line =~ ^[EWIXOPC]:\  ]] || continue
    accepted=0
    if [[ $line != E:* ]]; then
      for pattern in "${accepted_lintian[@]}"; do
        [[ ${line#?: } =~ ^$pattern ]] && accepted=1 && break
      done
    fi
    ((accepted)) || { echo "$line"; bad=1; }
  done <<<"$out"
  return $bad
}

# The maintainer scripts, run the way dpkg --root runs them (DPKG_ROOT), each package unpacked
# alone into a root of its own: its users and key modes land there, the running system is not
# touched. postinst_alone PACKAGE KEY USER GROUP: the postinst creates USER, and gives the key
# /etc/dtubroker/KEY (copied in with mode 0644) mode 0640, owner root and group GROUP.
postinst_alone() {
  local pkg=$1 key=$2 user=$3 group=$4 root=$work/alone/$1 gid
  mkdir -p "$root/etc/dtubroker"
  dpkg-deb -x "$(deb "$pkg")" "$root"
  install -m 0644 /dev/null "$root/etc/dtubroker/$key"
  DPKG_ROOT=$root sh "$work/control/$pkg/postinst" configure || { echo "postinst failed"; return 1; }
  grep -q "^$user:" "$root/etc/passwd" || { echo "no user $user in:"; cat "$root/etc/passwd"; return 1; }
  gid=$(awk -F: -v g="$group" '$1 == g { print $3 }' "$root/etc/group")
  [[ -n $gid ]] || { echo "no group $group"; return 1; }
  [[ $(stat -c '%a %u %g' "$root/etc/dtubroker/$key") == "640 0 $gid" ]] ||
    { echo "$key: mode, owner, group $(stat -c '%a %u %g' "$root/etc/dtubroker/$key"), want 640 0 $gid"; return 1; }
}

agent_user_in_dtu_usb() {
  grep -qE '^dtu-usb:[^:]*:[0-9]+:dtu-agent$' "$work/alone/dtubroker-agent/etc/group" ||
    { echo "dtu-usb is not the group of dtu-agent alone:"; cat "$work/alone/dtubroker-agent/etc/group"; return 1; }
}

postrm_runs() {
  local pkg
  for pkg in dtubroker-devmgr dtubroker-agent; do
    DPKG_ROOT=$work/alone/$pkg sh "$work/control/$pkg/postrm" purge || { echo "$pkg postrm purge failed"; return 1; }
  done
}

# cmake --install with another prefix: every file under it, /etc and /lib included.
prefix_install_stays_inside() {
  local outside
  cmake --install "$build" --prefix "$work/prefix" >"$work/install.log" 2>&1 || { cat "$work/install.log"; return 1; }
  outside=$(grep -v "^$work/prefix/" "$build/install_manifest.txt" || true)
  [[ -z $outside ]] || { echo "installed outside the prefix:"; echo "$outside"; return 1; }
  for path in sbin/devmgr etc/dtubroker/devmgr.json lib/systemd/system/devmgr.service \
              lib/udev/rules.d/70-dtubroker.rules lib/cups/backend/dtu share/man/man8/devmgr.8.gz; do
    [[ -e $work/prefix/$path ]] || { echo "$path: not installed"; return 1; }
  done
}

# --- the checks ------------------------------------------------------------------------------------
mkdir -p "$work/root" "$work/control" "$work/alone"
for pkg in "${packages[@]}"; do
  if [[ ! -f $(deb "$pkg") ]]; then
    echo "packages_test: cpack made no $(basename "$(deb "$pkg")"); it made:" >&2
    ls "$work/out" >&2
    exit 1
  fi
  dpkg-deb -x "$(deb "$pkg")" "$work/root"
  dpkg-deb -e "$(deb "$pkg")" "$work/control/$pkg"
done

for pkg in "${packages[@]}"; do
  check "$pkg holds exactly its files, with their modes" holds_exactly_expected_files "$pkg"
  check "$pkg: every entry is owned by root/root" everything_owned_by_root "$pkg"
  check "$pkg: every directory is 0755" directories_are_0755 "$pkg"
  check "$pkg: configs, units, docs and gzipped man pages equal their sources" files_match_sources "$pkg"
  check "$pkg: conffiles lists its /etc files" conffiles_list_the_etc_files "$pkg"
  check "$pkg: maintainer scripts shipped as written, executable" maintainer_scripts_shipped "$pkg"
  check "$pkg: control fields (name, version, architecture, description)" control_fields_sane "$pkg"
  check "$pkg: Depends names its libraries" depends_sane "$pkg"
  check "$pkg: binaries stripped" binaries_stripped "$pkg"
done
check "no file is in two packages (dpkg would refuse to install them together)" no_path_in_two_packages
check "lintian: no error, only the accepted warnings" lintian_clean
check "the unpacked programs find their shared libraries" libraries_resolve
check "unpacked devmgr --version prints ${version%-*}" run_ok "${version%-*}" usr/sbin/devmgr --version
check "unpacked dtu-agent --version prints ${version%-*}" run_ok "${version%-*}" usr/sbin/dtu-agent --version
check "unpacked devmgrctl --help runs" run_ok "devmgrctl" usr/bin/devmgrctl --help
check "unpacked dtu-simctl --help runs" run_ok "dtu-simctl" usr/bin/dtu-simctl --help
check "unpacked dtu-print --help runs" run_ok "dtu-print" usr/sbin/dtu-print --help
check "unpacked dtu-unit --help runs" run_ok "dtu-unit" usr/bin/dtu-unit --help
check "unpacked dtu-sample-service --help runs" run_ok "dtu-sample-service" usr/bin/dtu-sample-service --help
check "dtubroker-devmgr postinst alone creates the user dtubroker, site-dtu.key 0640 root:dtubroker" \
  postinst_alone dtubroker-devmgr site-dtu.key dtubroker dtubroker
check "dtubroker-agent postinst alone creates the user dtu-agent, dtu.key 0640 root:dtu-agent" \
  postinst_alone dtubroker-agent dtu.key dtu-agent dtu-agent
check "dtubroker-agent postinst puts dtu-agent, and only it, in the group dtu-usb" agent_user_in_dtu_usb
check "postrm purge (under DPKG_ROOT) runs cleanly" postrm_runs
check "cmake --install --prefix DIR puts every file under DIR" prefix_install_stays_inside

echo "$passed passed, $failed failed"
((failed == 0))
