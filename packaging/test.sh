#!/usr/bin/env bash
# The packaging test (run by CI, as root, on Debian 12; systemd need not be PID 1):
#  1. builds the .deb (packaging/build-deb.sh; reuses target/ when it is up to date),
#  2. checks it with lintian (no error, no warning left without an explained override),
#  3. runs the example playbook on this machine (ansible-playbook -c local) against a
#     local Garage S3 server holding an image, installing that .deb,
#  4. verifies the installed unit with systemd-analyze verify,
#  5. starts the daemon the way autosquash.service does (its ExecCondition, Environment,
#     EnvironmentFile and ExecStart, under its capability bounding set and no-new-privs)
#     and reads the image through /mnt/autosquash, as root and as another user; checks
#     that updatedb skips the mounts,
#  6. runs the playbook again (it must report no changes),
#  7. stops the daemon as systemd would (SIGTERM, then ExecStopPost) and after a SIGKILL,
#     checking that nothing stays mounted; then runs the unit under systemd itself (PID 1
#     of a namespace): restart, kill -9, reload and upgrade with readers that must not fail,
#  8. removes and purges the package and checks that nothing is left behind.
# Each check prints one PASS or FAIL line; the exit status is non-zero if any failed.
# Whatever happens, the daemon, Garage, the package and the files edited on this machine
# are cleaned up (trap), so the test can be run again.
#
# Usage: sudo bash packaging/test.sh   (AUTOSQUASH_TEST_KEEP=1 keeps the logs: playbook runs,
# daemon, lintian, Garage)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
root=$PWD

failures=0
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
info() { echo "      $*"; }
# check DESCRIPTION COMMAND...: one PASS/FAIL line for a command's success.
check() {
  local what=$1
  shift
  if "$@"; then pass "$what"; else fail "$what"; fi
}
# A failed step that later steps depend on ends the test (cleanup still runs).
abort() {
  fail "$*"
  echo "packaging/test.sh: stopping here; later checks need this step" >&2
  exit 1
}
indent() { sed 's/^/      | /'; }
# Whether dpkg knows autosquash as installed or with its configuration left.
package_known() { dpkg-query -W -f '${Status}' autosquash 2>/dev/null | grep -qv 'not-installed'; }

[[ $(id -u) -eq 0 ]] || { echo "packaging/test.sh: run as root" >&2; exit 1; }

installed_unit=/lib/systemd/system/autosquash.service
unit=$installed_unit
mnt=/mnt/autosquash
objects_mnt=/mnt/autosquash-test-objects # the playbook's extra mount, in objects view
image=packaging-test
work=$(mktemp -d /tmp/autosquash-packaging-test.XXXXXX)
daemon_pid=
garage_pid=
touched= # set once the test starts changing this machine
backups=(/etc/updatedb.conf /etc/fuse.conf)

# --- cleanup ------------------------------------------------------------------------------
cleanup() {
  local rc=$?
  if [[ -n ${ns_unshare:-} ]]; then
    [[ -n ${ns_pid:-} ]] && kill -KILL "$ns_pid" 2>/dev/null
    kill -KILL "$ns_unshare" 2>/dev/null
    wait "$ns_unshare" 2>/dev/null
  fi
  [[ -n ${ns_work:-} ]] && rm -rf "$ns_work"
  if [[ -n $daemon_pid ]] && kill -0 "$daemon_pid" 2>/dev/null; then
    kill -TERM "$daemon_pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$daemon_pid" 2>/dev/null
    wait "$daemon_pid" 2>/dev/null
  fi
  if [[ -n $garage_pid ]]; then
    kill "$garage_pid" 2>/dev/null
    wait "$garage_pid" 2>/dev/null
  fi
  if [[ -n $touched ]]; then
    for m in "$mnt" "$objects_mnt"; do
      if findmnt -rn --mountpoint "$m" >/dev/null 2>&1 || ! stat "$m" >/dev/null 2>&1; then
        umount -l "$m" 2>/dev/null
      fi
    done
    package_known && dpkg --purge autosquash >/dev/null 2>&1
    for f in "${backups[@]}"; do
      local saved=$work/backup${f//\//_}
      if [[ -e $saved ]]; then
        cp -p "$saved" "$f"
      elif [[ -e $saved.absent ]]; then
        rm -f "$f"
      fi
    done
    rmdir "$objects_mnt" 2>/dev/null
    rm -f /var/cache/apt/archives/autosquash_*.deb # the role's copy of the package
  fi
  if [[ -n ${AUTOSQUASH_TEST_KEEP:-} ]]; then
    echo "packaging/test.sh: logs kept in $work"
  else
    rm -rf "$work"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- tools --------------------------------------------------------------------------------
need=()
for tool in lintian:lintian ansible-playbook:ansible-core systemd-analyze:systemd \
  dpkg-shlibdeps:dpkg-dev mksquashfs:squashfs-tools fusermount3:fuse3 curl:curl \
  updatedb.plocate:plocate man:man-db python3:python3 setpriv:util-linux; do
  command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
done
# The apt module of Ansible runs under Debian's python3.
/usr/bin/python3 -c 'import apt' 2>/dev/null || need+=(python3-apt)
if ((${#need[@]})); then
  echo "packaging/test.sh: installing ${need[*]} from Debian"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null ||
    abort "installing ${need[*]}"
fi
garage=${AUTOSQUASH_GARAGE_BIN:-/var/cache/autosquash-ci/garage-2.5.0/bin/garage}
[[ -x $garage ]] || garage=$(bash tests/install-garage) || abort "getting Garage (tests/install-garage)"

# This test owns /mnt/autosquash and the package while it runs.
if findmnt -rn --mountpoint "$mnt" >/dev/null; then
  abort "$mnt is mounted already (another autosquash?); stop it before running this test"
fi
touched=1
if package_known; then
  echo "packaging/test.sh: purging the autosquash package installed before the test"
  dpkg --purge autosquash >/dev/null || abort "purging a previously installed autosquash"
fi
for f in "${backups[@]}"; do
  if [[ -e $f ]]; then cp -p "$f" "$work/backup${f//\//_}"; else touch "$work/backup${f//\//_}.absent"; fi
done

# --- reading the unit -------------------------------------------------------------------
# The unit, read as systemd reads it: [Service] settings, continuation lines, quoting; the
# environment of a system service (PATH, RUNTIME_DIRECTORY, Environment=, EnvironmentFile=)
# and the command of a setting (prefixes -@:+! dropped), NUL-separated for mapfile.
unit_py='
import shlex, sys
def settings(path):
    out, section, line = {}, None, ""
    for raw in open(path):
        raw = raw.rstrip("\n")
        if not line and raw.lstrip().startswith(("#", ";")):
            continue
        if raw.endswith("\\"):
            line += raw[:-1] + " "
            continue
        line, raw = "", line + raw
        raw = raw.strip()
        if raw.startswith("["):
            section = raw.strip("[]")
        elif "=" in raw:
            k, v = raw.split("=", 1)
            out.setdefault((section, k.strip()), []).append(v.strip())
    return out
def env_file(path, env):
    try:
        lines = open(path).read().splitlines()
    except FileNotFoundError:
        return
    for l in lines:
        l = l.strip()
        if not l or l.startswith(("#", ";")) or "=" not in l:
            continue
        k, v = l.split("=", 1)
        k, v = k.strip(), v.strip()
        if len(v) >= 2 and v[0] == v[-1] == "\"":
            v = v[1:-1].replace("\\\"", "\"").replace("\\\\", "\\")
        elif len(v) >= 2 and v[0] == v[-1] == "'"'"'":
            v = v[1:-1]
        env[k] = v
s = settings(sys.argv[1])
what = sys.argv[2]
if what == "env":
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    for d in s.get(("Service", "RuntimeDirectory"), []):
        env["RUNTIME_DIRECTORY"] = "/run/" + d
    for d in s.get(("Service", "CacheDirectory"), []):
        env["CACHE_DIRECTORY"] = "/var/cache/" + d
    for v in s.get(("Service", "Environment"), []):
        for a in shlex.split(v):
            k, _, val = a.partition("=")
            env[k] = val
    for v in s.get(("Service", "EnvironmentFile"), []):
        env_file(v.lstrip("-"), env)
    sys.stdout.write("".join(f"{k}={v}\0" for k, v in env.items()))
else:
    for v in s.get(tuple(what.split(".")), []):
        words = shlex.split(v)
        words[0] = words[0].lstrip("-@:+!")
        sys.stdout.write("".join(w + "\0" for w in words))
        break
'
# unit_get KEY (Section.Setting, or env) reads $unit, the unit file under test.
unit_get() { python3 -c "$unit_py" "$unit" "$1"; }

# --- 1. the package -----------------------------------------------------------------------
if deb=$(bash packaging/build-deb.sh 2>"$work/build.log" | tail -1) && [[ -f $deb ]]; then
  pass "build the package: ${deb#"$root"/}"
else
  indent <"$work/build.log" | tail -30
  abort "build the package (packaging/build-deb.sh)"
fi
fields=$(dpkg-deb -f "$deb" Depends)
check "Depends: fuse3 and a libc6 version ($fields)" \
  bash -c '[[ ", $1," == *", fuse3,"* && $1 =~ libc6\ \(\>=\ [0-9.]+\) ]]' _ "$fields"
contents=$(dpkg-deb -c "$deb" | awk '{print $6}')
check "the package holds the binary, the unit, the config and the man page" bash -c '
  for f in ./usr/bin/autosquash ./lib/systemd/system/autosquash.service \
    ./etc/autosquash/config.toml ./usr/share/man/man1/autosquash.1.gz \
    ./usr/share/doc/autosquash/copyright ./usr/share/doc/autosquash/changelog.Debian.gz; do
    grep -qx "$f" <<<"$1" || { echo "      missing $f"; exit 1; }
  done' _ "$contents"
check "/etc/autosquash/config.toml is a conffile" \
  grep -qx /etc/autosquash/config.toml < <(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles)

# The shipped config, read by the packaged binary: valid, but with nothing to serve, and
# the unit's ExecCondition skips the service on it. With every example uncommented it is
# valid and has mounts (its mountpoints, pointed at a missing directory, are the first
# thing the daemon then complains about).
dpkg-deb -x "$deb" "$work/deb"
shipped=$work/deb/etc/autosquash/config.toml
unit=$work/deb$installed_unit
mapfile -d '' exec_condition < <(unit_get Service.ExecCondition)
# The ExecCondition command on another file than the one it names.
condition_on() { "${exec_condition[@]:0:${#exec_condition[@]}-1}" "$1"; }
condition_skips() { ! condition_on "$1"; }
out=$("$work/deb/usr/bin/autosquash" serve --config "$shipped" 2>&1)
check "shipped config: valid, nothing to serve yet" grep -q "nothing to serve" <<<"$out"
check "shipped config: the unit's ExecCondition skips the service" condition_skips "$shipped"
sed -E -e 's/^#(\[|[a-z_]+ = )/\1/' -e "s|^mountpoint = .*|mountpoint = \"$work/missing\"|" "$shipped" >"$work/examples.toml"
out=$("$work/deb/usr/bin/autosquash" serve --config "$work/examples.toml" 2>&1)
if grep -q "$work/missing does not exist" <<<"$out"; then
  pass "shipped config with its examples uncommented: valid"
else
  indent <<<"$out"
  fail "shipped config with its examples uncommented: valid"
fi
check "shipped config with its examples uncommented: ExecCondition lets the service start" condition_on "$work/examples.toml"
unit=$installed_unit

# --- 2. lintian ---------------------------------------------------------------------------
# Every tag lintian still reports at warning level or above is overridden in
# packaging/deb/lintian-overrides, each with its reason.
lintian --fail-on none --display-level '>=warning' --show-overrides "$deb" >"$work/lintian.log" 2>&1
lintian_rc=$?
grep -E '^[EWO]: ' "$work/lintian.log" | indent
overridden=$(grep -c '^O: ' "$work/lintian.log")
if ((lintian_rc != 0)); then
  grep -v 'running with root privileges' "$work/lintian.log" | indent
  fail "lintian did not run (exit status $lintian_rc)"
elif grep -qE '^[EW]: ' "$work/lintian.log"; then
  fail "lintian reports errors or warnings"
else
  pass "lintian: no errors, no warnings ($overridden overridden, each with its reason in packaging/deb/lintian-overrides)"
fi

# --- Garage with an image -----------------------------------------------------------------
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }
s3_port=$(free_port) rpc_port=$(free_port) admin_port=$(free_port)
key_id=GK$(hex 12) secret=$(hex 32) bucket=autosquash-packaging-test
endpoint=http://127.0.0.1:$s3_port
mkdir -p "$work/garage"
cat >"$work/garage/garage.toml" <<EOF
metadata_dir = "$work/garage/meta"
data_dir = "$work/garage/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(hex 32)"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3_port"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$admin_port"
EOF
garage_cmd() { "$garage" -c "$work/garage/garage.toml" "$@"; }
RUST_LOG=garage=warn "$garage" -c "$work/garage/garage.toml" server >"$work/garage/log" 2>&1 &
garage_pid=$!
node=
for _ in $(seq 100); do
  node=$(garage_cmd node id -q 2>/dev/null) && break
  sleep 0.2
done
node=${node%%@*}
# `node id` answers before the server listens; the layout needs its RPC port.
assigned=no
for _ in $(seq 150); do
  [[ -n $node ]] && garage_cmd layout assign -z dc1 -c 1G "$node" >/dev/null 2>&1 && { assigned=yes; break; }
  sleep 0.2
done
if [[ $assigned = yes ]] &&
  garage_cmd layout apply --version 1 >/dev/null &&
  garage_cmd key import --yes -n packaging-test "$key_id" "$secret" >/dev/null &&
  garage_cmd bucket create "$bucket" >/dev/null &&
  garage_cmd bucket allow --read --write --owner "$bucket" --key "$key_id" >/dev/null; then
  pass "Garage S3 server on $endpoint with bucket $bucket"
else
  indent <"$work/garage/log" | tail -20
  abort "start Garage"
fi
s3_put() {
  curl -sSf --aws-sigv4 "aws:amz:garage:s3" --user "$key_id:$secret" \
    -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" -T "$1" "$endpoint/$bucket/$2"
}
tree=$work/image-tree
mkdir -p "$tree/bin" "$tree/share/doc"
echo "hello from the packaging test" >"$tree/hello.txt"
printf '#!/bin/sh\necho tool\n' >"$tree/bin/tool"
chmod 0755 "$tree/bin/tool"
seq 1 20000 >"$tree/share/doc/numbers.txt"
if mksquashfs "$tree" "$work/$image.squash" -comp gzip -noappend -quiet -all-root >/dev/null &&
  s3_put "$work/$image.squash" "autosquash/$image.squash"; then
  pass "image autosquash/$image.squash uploaded"
else
  abort "build and upload the image"
fi

# --- 3. the playbook ----------------------------------------------------------------------
# The example playbook, with the bucket, endpoint, credentials and the package of this test
# given as extra variables (they override the playbook's), and the extra mount pointed at
# this bucket. No become: we are root already (and sudo may not be installed).
cat >"$work/vars.json" <<EOF
{
  "autosquash_deb": "$deb",
  "autosquash_bucket": "$bucket",
  "autosquash_prefix": "autosquash/",
  "autosquash_region": "garage",
  "autosquash_endpoint": "$endpoint",
  "autosquash_environment": {
    "AWS_ACCESS_KEY_ID": "$key_id",
    "AWS_SECRET_ACCESS_KEY": "$secret",
    "AWS_EC2_METADATA_DISABLED": "true"
  },
  "autosquash_extra_mounts": [
    {"source": "s3://$bucket/", "mountpoint": "$objects_mnt", "view": "objects", "allow_other": true}
  ],
  "ansible_become": false,
  "ansible_python_interpreter": "/usr/bin/python3"
}
EOF
playbook() {
  ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0 ANSIBLE_RETRY_FILES_ENABLED=0 \
    ANSIBLE_LOCALHOST_WARNING=0 ANSIBLE_INVENTORY_UNPARSED_WARNING=0 \
    ansible-playbook -i localhost, -c local packaging/ansible/playbook.yml \
    -e "@$work/vars.json" >"$1" 2>&1
}
recap() { grep -A1 '^PLAY RECAP' "$1" | tail -1 | sed 's/^localhost *: *//;s/  */ /g'; }
if playbook "$work/playbook1.log"; then
  pass "playbook, first run: $(recap "$work/playbook1.log")"
else
  indent <"$work/playbook1.log" | tail -40
  abort "playbook, first run"
fi
check "package installed by the playbook" \
  bash -c '[[ $(dpkg-query -W -f "\${Status}" autosquash) == "install ok installed" ]]'
check "the unit is enabled (multi-user.target.wants)" \
  test -L /etc/systemd/system/multi-user.target.wants/autosquash.service
check "/etc/default/autosquash holds the credentials, mode 0600" \
  bash -c '[[ $(stat -c %a /etc/default/autosquash) == 600 ]] && grep -q "^AWS_ACCESS_KEY_ID=" /etc/default/autosquash'
check "/etc/fuse.conf: user_allow_other" grep -qx user_allow_other /etc/fuse.conf
# A list word of VAR="..." in /etc/updatedb.conf.
prune_has() { grep -Eq "^[[:space:]]*$1[[:space:]]*=[[:space:]]*\"([^\"]*[[:space:]])?$2([[:space:]][^\"]*)?\"" /etc/updatedb.conf; }
check "/etc/updatedb.conf: PRUNEPATHS has $mnt and $objects_mnt, PRUNEFS has fuse.autosquash" \
  bash -c "$(declare -f prune_has); prune_has PRUNEPATHS $mnt && prune_has PRUNEPATHS $objects_mnt && prune_has PRUNEFS fuse.autosquash"

# --- 4. systemd-analyze verify ------------------------------------------------------------
if systemd-analyze verify "$unit" >"$work/verify.log" 2>&1 && ! grep -q . "$work/verify.log"; then
  pass "systemd-analyze verify $unit"
else
  indent <"$work/verify.log"
  fail "systemd-analyze verify $unit"
fi
systemd-analyze security --offline=true "$unit" 2>/dev/null | grep 'Overall exposure' | sed 's/^→ /      /'

# --- 5. the daemon, started as the unit starts it ----------------------------------------
mapfile -d '' service_env < <(unit_get env)
mapfile -d '' exec_condition < <(unit_get Service.ExecCondition)
mapfile -d '' exec_start < <(unit_get Service.ExecStart)
mapfile -d '' exec_stop_post < <(unit_get Service.ExecStopPost)
# RuntimeDirectory= and CacheDirectory=, made (and the first removed on stop) as systemd
# does; a temporary stand-in if the unit stops naming them.
runtime_dir=$(unit_get Service.RuntimeDirectory | tr -d '\0')
runtime_dir=${runtime_dir:+/run/$runtime_dir}
runtime_dir=${runtime_dir:-$work/runtime}
cache_dir=$(unit_get Service.CacheDirectory | tr -d '\0')
cache_dir=${cache_dir:+/var/cache/$cache_dir}
cache_dir=${cache_dir:-$work/cache}
cache_mode=$(unit_get Service.CacheDirectoryMode | tr -d '\0')
condition_path=$(unit_get Unit.ConditionPathExists | tr -d '\0')
# What the unit's sandbox does that can be reproduced without systemd: the capability
# bounding set and no-new-privs (DeviceAllow=, SystemCallFilter= and the other seccomp
# settings need systemd itself).
caps=$(grep -m1 '^CapabilityBoundingSet=' "$unit" | cut -d= -f2 | tr '[:upper:]' '[:lower:]' | sed 's/cap_//g; s/ /,+/g')
nnp=()
grep -qx 'NoNewPrivileges=yes' "$unit" && nnp=(--no-new-privs)
# run_as_unit COMMAND...: runs a command of the unit in the service's environment and
# sandbox. It replaces the shell that runs it: call it in a subshell, ( run_as_unit ... ).
run_as_unit() {
  cd / && exec env -i "${service_env[@]}" /usr/bin/setpriv "${nnp[@]}" --bounding-set "-all,+$caps" "$@"
}
info "ExecStart: ${exec_start[*]}"
info "sandbox reproduced here: setpriv ${nnp[*]} --bounding-set -all,+$caps"

start_daemon() { # LOG: starts the daemon in the background, waits for both mounts
  mkdir -p "$runtime_dir" "$cache_dir"
  chmod "${cache_mode:-0755}" "$cache_dir"
  [[ -z $(autosquash_mounts) ]] || { info "autosquash mounts exist before the start"; return 1; }
  (run_as_unit "${exec_start[@]}") </dev/null >"$1" 2>&1 &
  daemon_pid=$!
  for _ in $(seq 150); do
    findmnt -rn --mountpoint "$mnt" >/dev/null && findmnt -rn --mountpoint "$objects_mnt" >/dev/null && return 0
    kill -0 "$daemon_pid" 2>/dev/null || break
    sleep 0.2
  done
  indent <"$1" | tail -20
  return 1
}
# stop_daemon: what systemd does on stop with KillMode=mixed and TimeoutStopSec=; sets
# daemon_status to the daemon's exit status.
stop_daemon() {
  local timeout
  timeout=$(grep -m1 '^TimeoutStopSec=' "$unit" | cut -d= -f2 | tr -dc 0-9)
  kill -TERM "$daemon_pid"
  for _ in $(seq $((${timeout:-90} * 10))); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$daemon_pid" 2>/dev/null; then
    info "the daemon is still running ${timeout:-90} s after SIGTERM; its processes and their threads' kernel stacks:"
    pstree -p "$daemon_pid" | indent
    local p
    for p in $(pgrep -f "autosquash serve"); do
      echo "== $p: $(tr '\0' ' ' <"/proc/$p/cmdline")"
      cat /proc/"$p"/task/*/stack 2>/dev/null | sort | uniq -c | sort -rn | head -8
    done | indent
  fi
  kill -KILL "$daemon_pid" 2>/dev/null
  wait "$daemon_pid"
  daemon_status=$?
  daemon_pid=
}
run_stop_post() { (run_as_unit "${exec_stop_post[@]}"); }
# The test's mounts still in the mount table (other autosquash daemons may run here).
autosquash_mounts() {
  local m
  for m in "$mnt" "$objects_mnt"; do findmnt -rn -o TARGET --mountpoint "$m"; done
}

check "ConditionPathExists=$condition_path holds" test -e "$condition_path"
if (run_as_unit "${exec_condition[@]}"); then
  pass "ExecCondition passes: the config the role wrote has a [[mount]]"
else
  fail "ExecCondition (${exec_condition[*]}) fails on the config the role wrote"
fi
if start_daemon "$work/daemon.log"; then
  pass "daemon started as the unit starts it; $mnt and $objects_mnt mounted"
else
  abort "daemon started as the unit starts it"
fi
info "mount: $(findmnt -n -o SOURCE,FSTYPE,OPTIONS --mountpoint "$mnt")"
check "ls $mnt lists the image" bash -c "ls '$mnt' | grep -qx '$image'"
if listing=$(ls "$mnt/$image") && grep -qx hello.txt <<<"$listing"; then
  pass "ls $mnt/$image: $(tr '\n' ' ' <<<"$listing")"
else
  fail "ls $mnt/$image"
fi
check "file contents read through the mount" \
  bash -c "cmp -s '$tree/hello.txt' '$mnt/$image/hello.txt' && cmp -s '$tree/share/doc/numbers.txt' '$mnt/$image/share/doc/numbers.txt'"
check "another user (nobody) reads the image too (allow_other)" \
  bash -c "setpriv --reuid=nobody --regid=nogroup --clear-groups cat '$mnt/$image/hello.txt' >/dev/null"
check "the objects view shows the image object, byte for byte" \
  cmp -s "$work/$image.squash" "$objects_mnt/autosquash/$image.squash"
check "autosquash status answers on the control socket" \
  bash -c "autosquash status >'$work/status.log' 2>&1"
# updatedb, with this machine's /etc/updatedb.conf, must not index the mounts; the same
# crawl without the prune settings does (so the check proves something).
updatedb.plocate -U /mnt -o "$work/unpruned.db" --prunepaths "" --prunefs "" 2>/dev/null
updatedb.plocate -U /mnt -o "$work/pruned.db" 2>/dev/null
if plocate -d "$work/unpruned.db" "$image/hello.txt" >/dev/null; then
  if plocate -d "$work/pruned.db" "$image" >/dev/null; then
    fail "updatedb indexes the mounts: $(plocate -d "$work/pruned.db" "$image" | head -3 | tr '\n' ' ')"
  else
    pass "updatedb (plocate) skips $mnt and $objects_mnt"
  fi
else
  fail "updatedb test: the unpruned crawl did not find $image/hello.txt either"
fi

# --- 6. the playbook again ----------------------------------------------------------------
if playbook "$work/playbook2.log"; then
  r=$(recap "$work/playbook2.log")
  if [[ $r == *" changed=0 "* && $r == *" failed=0 "* ]]; then
    pass "playbook, second run (daemon serving): no changes ($r)"
  else
    grep -B2 -A3 '^changed:' "$work/playbook2.log" | indent
    fail "playbook, second run reports changes: $r"
  fi
else
  indent <"$work/playbook2.log" | tail -40
  fail "playbook, second run"
fi

# --- 6b. a package upgrade under load -------------------------------------------------------
# A newer build (revision 2) installed with dpkg -i while a reader loops over a file, a
# process has its working directory in the image and a file is held open; then the reload
# that postinst asks systemd for (ExecReload= sends SIGHUP; CI has no systemd as PID 1, so
# it is sent here): the daemon execs the new binary, which takes the mounts over.
serving_pid() { awk '{print $1}' "/proc/$daemon_pid/task/$daemon_pid/children" 2>/dev/null; }
if newer=$(DEB_REVISION=2 bash packaging/build-deb.sh 2>>"$work/build.log" | tail -1) && [[ -f $newer ]]; then
  before=$(serving_pid)
  exec 7<"$mnt/$image/share/doc/numbers.txt"
  (cd "$mnt/$image" && exec sleep 60) &
  cwd_pid=$!
  : >"$work/upgrade-reads"
  (
    end=$((SECONDS + 6))
    while ((SECONDS < end)); do
      # From the daemon, not the page cache.
      echo 1 >/proc/sys/vm/drop_caches 2>/dev/null
      if cmp -s "$tree/share/doc/numbers.txt" "$mnt/$image/share/doc/numbers.txt"; then echo ok; else echo failed; fi
    done >"$work/upgrade-reads"
  ) &
  reader_pid=$!
  sleep 1
  dpkg -i "$newer" >"$work/upgrade.log" 2>&1 || indent <"$work/upgrade.log"
  kill -HUP "$daemon_pid"
  wait "$reader_pid"
  after=$(serving_pid)
  check "upgrade: dpkg -i of revision 2 while serving" \
    bash -c "[[ \$(dpkg-query -W -f '\${Version}' autosquash) == *-2 ]]"
  check "upgrade: the reload handed the mounts to the new binary in the same process" \
    bash -c "[[ -n '$before' && '$before' == '$after' ]] && grep -q 'handing the mounts over' '$work/daemon.log' && ! readlink /proc/$after/exe | grep -q deleted"
  check "upgrade: $(grep -c ok "$work/upgrade-reads") reads across it, none failed" \
    bash -c "grep -q ok '$work/upgrade-reads' && ! grep -q failed '$work/upgrade-reads'"
  check "upgrade: the file held open reads on" cmp -s "$tree/share/doc/numbers.txt" /dev/fd/7
  check "upgrade: the working directory in the image is listed" ls "/proc/$cwd_pid/cwd/hello.txt"
  kill "$cwd_pid" 2>/dev/null
  wait "$cwd_pid" 2>/dev/null
  exec 7<&-
else
  fail "build revision 2 of the package for the upgrade test"
fi

# --- 7. stopping --------------------------------------------------------------------------
stop_daemon
if [[ $daemon_status != 0 ]]; then
  grep -v ' DEBUG ' "$work/daemon.log" | tail -25 | indent
fi
check "SIGTERM: the daemon exits with status 0" test "$daemon_status" = 0
check "SIGTERM: nothing left mounted" test -z "$(autosquash_mounts)"
check "ExecStopPost (${exec_stop_post[*]}) after a clean stop" run_stop_post
rm -rf "$runtime_dir" # RuntimeDirectory= is removed on stop

if start_daemon "$work/daemon2.log"; then
  kill -KILL "$daemon_pid"
  wait "$daemon_pid" 2>/dev/null
  daemon_pid=
  after=$(stat "$mnt" 2>&1 >/dev/null)
  if [[ $after == *"not connected"* ]]; then
    pass "SIGKILL leaves dead mounts (\"Transport endpoint is not connected\")"
  else
    info "(after SIGKILL: ${after:-$mnt answers stat})"
  fi
  run_stop_post | indent
  check "SIGKILL: ExecStopPost unmounts what the daemon left" test -z "$(autosquash_mounts)"
  rm -rf "$runtime_dir"
else
  fail "daemon started again for the SIGKILL test"
fi

# --- 7b. the unit under systemd -----------------------------------------------------------
# The unit as installed, run by systemd itself: systemd (this machine's, 252 on Debian 12)
# as PID 1 of a PID and mount namespace, since CI has no systemd as PID 1. Across each of
# `systemctl restart`, kill -9 and the restart systemd does, `systemctl reload` with a
# changed configuration, and a package upgrade (dpkg -i, whose postinst asks systemd for
# the reload), a reader loops over files of the image, a process has its working
# directory in it and a file is held open: no read may fail, no byte differ, the mount
# stays the same one; the longest stall is printed. The namespace has its own /run (systemd
# mounts it) and its own /tmp, a tmpfs mounted before systemd starts: its boot-time
# systemd-tmpfiles would otherwise empty this machine's /tmp ("D /tmp"). What the readers
# compare against is under /var/tmp.
ns_work=$(mktemp -d /var/tmp/autosquash-packaging-ns.XXXXXX)
cp -r "$tree" "$ns_work/tree"
cat >"$ns_work/across.sh" <<'ACROSS'
#!/bin/bash
# across.sh SECONDS COMMAND...: runs COMMAND while readers use the image; prints one line:
# "<ok> <failed> <longest stall> <held file ok> <cwd ok> <same mount>".
set -u
seconds=$1
shift
mount_id() { awk -v m="$MNT" '$5 == m {print $1}' /proc/self/mountinfo | tail -1; }
before=$(mount_id)
exec 7<"$MNT/$IMAGE/share/doc/numbers.txt"
(cd "$MNT/$IMAGE/share" && exec sleep 120) &
cwd=$!
(
  end=$((SECONDS + seconds))
  while ((SECONDS < end)); do
    echo 1 >/proc/sys/vm/drop_caches 2>/dev/null # from the daemon, not the page cache
    start=$(date +%s.%N)
    if cmp -s "$TREE/share/doc/numbers.txt" "$MNT/$IMAGE/share/doc/numbers.txt" &&
      cmp -s "$TREE/hello.txt" "$MNT/$IMAGE/hello.txt"; then r=ok; else r=failed; fi
    echo "$r $start $(date +%s.%N)"
  done >"$WORK/reads"
) &
reader=$!
sleep 1.5
"$@" >"$WORK/command.log" 2>&1
wait "$reader"
held=no cwd_ok=no
cmp -s "$TREE/share/doc/numbers.txt" /dev/fd/7 && held=yes
ls "/proc/$cwd/cwd/doc/numbers.txt" >/dev/null 2>&1 && cwd_ok=yes
kill "$cwd"
same=no
[[ -n $before && $before == "$(mount_id)" ]] && same=yes
echo "$(grep -c '^ok' "$WORK/reads") $(grep -c '^failed' "$WORK/reads")" \
  "$(awk '{d = $3 - $2; if (d > m) m = d} END {printf "%.2f", m}' "$WORK/reads")" "$held $cwd_ok $same"
ACROSS
unshare --pid --fork --mount --mount-proc --propagation private bash -c \
  'mount -t tmpfs -o mode=1777 tmpfs /tmp &&
   exec env container=autosquash-packaging-test /lib/systemd/systemd --system --unit=sysinit.target' \
  >"$work/systemd.log" 2>&1 </dev/null &
ns_unshare=$!
ns_pid=
in_ns() { nsenter -t "$ns_pid" -p -m env MNT="$mnt" IMAGE="$image" TREE="$ns_work/tree" WORK="$ns_work" "$@"; }
for _ in $(seq 300); do
  ns_pid=$(pgrep -P "$ns_unshare" -x systemd)
  [[ -n $ns_pid ]] && [[ $(in_ns systemctl is-system-running 2>/dev/null) == @(running|degraded) ]] && break
  sleep 0.2
done
if [[ $(in_ns systemctl is-system-running 2>/dev/null) != @(running|degraded) ]]; then
  indent <"$work/systemd.log" | tail -20
  fail "systemd as PID 1 of a namespace: not running ($(in_ns systemctl is-system-running 2>&1))"
elif ! in_ns systemctl start autosquash.service 2>"$work/ns-start.log"; then
  indent <"$work/ns-start.log"
  in_ns journalctl -u autosquash --no-pager | tail -20 | indent
  fail "systemd: systemctl start autosquash"
else
  pass "systemd $(systemctl --version | awk 'NR == 1 {print $2}') as PID 1 of a namespace: systemctl start autosquash; $(in_ns ls "$mnt" | tr '\n' ' ')"
  # across WHAT SECONDS COMMAND...: one check for COMMAND run inside the namespace.
  across() {
    local what=$1 seconds=$2 result ok failed stall held cwd same
    shift 2
    result=$(in_ns bash "$ns_work/across.sh" "$seconds" "$@")
    read -r ok failed stall held cwd same <<<"$result"
    if [[ ${ok:-0} -gt 0 && $failed == 0 && $held == yes && $cwd == yes && $same == yes ]]; then
      pass "systemd: $what: $ok reads, none failed, longest stall ${stall} s; the held file, the working directory and the mount carry on"
    else
      indent <"$ns_work/command.log"
      in_ns journalctl -u autosquash --no-pager | tail -30 | indent
      fail "systemd: $what: $ok reads, ${failed:-?} failed, longest ${stall:-?} s; held file $held, working directory $cwd, same mount $same"
    fi
  }
  main_pid() { in_ns systemctl show -p MainPID --value autosquash.service; }
  before=$(main_pid)
  across "systemctl restart" 5 systemctl restart autosquash.service
  check "systemd: the restart started a new process ($before -> $(main_pid))" test "$before" != "$(main_pid)"
  before=$(main_pid)
  across "kill -9 and the restart systemd does (Restart=on-failure)" 6 systemctl kill -s KILL autosquash.service
  check "systemd: a new process after kill -9 ($before -> $(main_pid))" test "$before" != "$(main_pid)"
  cp -p /etc/autosquash/config.toml "$ns_work/config.toml"
  before=$(main_pid)
  across "systemctl reload with a changed configuration" 5 bash -c \
    'sed -i "0,/^\[\[mount\]\]/s//[[mount]]\nnegative_ttl = \"17s\"/" /etc/autosquash/config.toml && systemctl reload autosquash.service'
  check "systemd: the reload applied the change in the same process" \
    bash -c "grep -q 'negative_ttl = \"17s\"' /etc/autosquash/config.toml && [[ '$before' == \$(nsenter -t $ns_pid -p -m systemctl show -p MainPID --value autosquash.service) ]] && ! nsenter -t $ns_pid -p -m journalctl -u autosquash --no-pager | grep -q 'reload refused'"
  cp -p "$ns_work/config.toml" /etc/autosquash/config.toml
  if newest=$(DEB_REVISION=3 bash packaging/build-deb.sh 2>>"$work/build.log" | tail -1) && [[ -f $newest ]]; then
    across "package upgrade (dpkg -i of revision 3, postinst's reload)" 6 dpkg -i "$newest"
    check "systemd: the upgrade is installed and runs in the same process" \
      bash -c "[[ \$(dpkg-query -W -f '\${Version}' autosquash) == *-3 && '$(main_pid)' == \$(nsenter -t $ns_pid -p -m systemctl show -p MainPID --value autosquash.service) ]] && ! readlink /proc/\$(nsenter -t $ns_pid -p -m systemctl show -p MainPID --value autosquash.service)/exe | grep -q deleted"
  else
    fail "build revision 3 of the package for the upgrade under systemd"
  fi
  in_ns systemctl stop autosquash.service
  check "systemd: systemctl stop unmounts everything and empties the store" \
    bash -c "[[ -z \$(nsenter -t $ns_pid -p -m findmnt -rn -t fuse.autosquash) && \$(nsenter -t $ns_pid -p -m systemctl show -p NFileDescriptorStore --value autosquash.service) == 0 ]]"
fi
kill -KILL "$ns_pid" 2>/dev/null # PID 1 of the namespace: everything in it ends
wait "$ns_unshare" 2>/dev/null
ns_unshare=
rm -rf "$ns_work"

# --- updatedb.conf trigger ----------------------------------------------------------------
# plocate installed or upgraded after autosquash brings its own /etc/updatedb.conf: the
# package's file trigger puts the entries back.
sed -E -i -e 's#([" ])/mnt/autosquash([ "])#\1\2#' -e 's#([" ])fuse\.autosquash([ "])#\1\2#' /etc/updatedb.conf
if prune_has PRUNEPATHS "$mnt" || prune_has PRUNEFS fuse.autosquash; then
  info "(could not take the entries out of /etc/updatedb.conf for the trigger test)"
fi
dpkg-trigger --no-await /etc/updatedb.conf && dpkg --triggers-only autosquash >/dev/null 2>&1
check "trigger on /etc/updatedb.conf restores PRUNEPATHS/PRUNEFS" \
  bash -c "$(declare -f prune_has); prune_has PRUNEPATHS $mnt && prune_has PRUNEFS fuse.autosquash"

# --- 8. remove and purge ------------------------------------------------------------------
if dpkg --remove autosquash >"$work/remove.log" 2>&1; then
  pass "dpkg --remove autosquash"
else
  indent <"$work/remove.log"
  fail "dpkg --remove autosquash"
fi
check "after remove: the binary is gone, the configuration kept" \
  bash -c '! test -e /usr/bin/autosquash && test -f /etc/autosquash/config.toml'
if dpkg --purge autosquash >"$work/purge.log" 2>&1; then
  pass "dpkg --purge autosquash"
else
  indent <"$work/purge.log"
  fail "dpkg --purge autosquash"
fi
check "after purge: nothing mounted" test -z "$(autosquash_mounts)"
left=()
for p in /usr/bin/autosquash /usr/libexec/autosquash /etc/autosquash /etc/default/autosquash \
  "$unit" /usr/share/doc/autosquash /usr/share/man/man1/autosquash.1.gz \
  /usr/share/lintian/overrides/autosquash "$mnt" /run/autosquash /var/cache/autosquash; do
  [[ -e $p || -L $p ]] && left+=("$p")
done
while IFS= read -r p; do left+=("$p"); done < <(find /etc/systemd /var/lib/systemd -name '*autosquash*' 2>/dev/null)
if ((${#left[@]} == 0)); then
  pass "after purge: no file of the package left (binary, config, unit, enablement and mask links, /mnt/autosquash)"
else
  fail "after purge, left behind: ${left[*]}"
fi
if prune_has PRUNEFS fuse.autosquash || prune_has PRUNEPATHS "$mnt"; then
  fail "after purge: /etc/updatedb.conf still names fuse.autosquash or $mnt"
else
  pass "after purge: fuse.autosquash and $mnt are out of /etc/updatedb.conf"
fi

if ((failures)); then
  echo "packaging/test.sh: $failures check(s) failed"
  exit 1
fi
echo "packaging/test.sh: every check passed"
