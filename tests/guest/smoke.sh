#!/usr/bin/env bash
# Proves the test guest works with plain qemu under TCG: boots it (virtio-blk overlay on the
# cached image, a config-2 ISO as IDE/AHCI cdrom, user-mode networking, a QMP socket), checks
# its KVMTEST lines, HTTP and UDP echo, powers it off with system_powerdown, then boots it
# again and checks the boot counter went up and that kvmtest.ignore_acpi=1 (via -fw_cfg) makes
# it ignore the button.
#
# Runs in its own network + mount namespace: qemu's slirp can reach nothing but a dnsmasq on
# the namespace's loopback, which answers kvmtest.example; /etc/resolv.conf is bind-mounted
# to point there. Needs root.
# Env: KVMTEST_SMOKE_MACHINE  qemu machine type (default pc; q35 works too).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ -z ${KVMTEST_SMOKE_INNER:-} ]]; then
    t0=$(date +%s.%N)
    img=$("$here/build.sh")
    took=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    echo "smoke: image $img ($(du -h "$img" | cut -f1)), build or cache check ${took}s"
    exec env KVMTEST_SMOKE_INNER=1 KVMTEST_SMOKE_IMG="$img" unshare --net --mount "$0" "$@"
fi

img=$KVMTEST_SMOKE_IMG
machine=${KVMTEST_SMOKE_MACHINE:-pc}
tmp=$(mktemp -d /tmp/kvmtest-smoke.XXXXXX)
qemu_pid=
dns_pid=
cleanup() {
    [[ -n $qemu_pid ]] && kill "$qemu_pid" 2>/dev/null
    [[ -n $dns_pid ]] && kill "$dns_pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
fail() {
    echo "smoke: FAIL: $*" >&2
    echo "--- console ---" >&2
    cat "$tmp"/console*.log >&2 || true
    exit 1
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# --- isolated network: loopback only, DNS answered locally --------------------------------
ip link set lo up
echo "nameserver 127.0.0.1" >"$tmp/resolv.conf"
mount --bind "$tmp/resolv.conf" /etc/resolv.conf
dnsmasq --keep-in-foreground --no-resolv --no-hosts --bind-interfaces \
    --listen-address=127.0.0.1 --address=/kvmtest.example/192.0.2.7 --pid-file="$tmp/dnsmasq.pid" \
    2>"$tmp/dnsmasq.log" &
dns_pid=$!

# --- config drive ----------------------------------------------------------------------------
mkdir -p "$tmp/cd/openstack/latest"
printf '#cloud-config\n# kvmtest.dns=kvmtest.example\n' >"$tmp/cd/openstack/latest/user_data"
printf '{"uuid": "00000000-0000-0000-0000-000000000001"}\n' >"$tmp/cd/openstack/latest/meta_data.json"
genisoimage -quiet -o "$tmp/config.iso" -V config-2 -J -R "$tmp/cd"
qemu-img create -q -f qcow2 -b "$img" -F qcow2 "$tmp/overlay.qcow2"

# boot N [extra qemu args...]: starts qemu in the background, console to console-N.log.
boot() {
    local n=$1
    shift
    qemu-system-x86_64 -accel tcg -machine "$machine" -nodefaults -nographic -m 256 \
        -serial stdio \
        -drive file="$tmp/overlay.qcow2",if=virtio,format=qcow2 \
        -drive file="$tmp/config.iso",if=ide,media=cdrom,format=raw,readonly=on \
        -netdev user,id=n0,hostname=kvmtest-smoke,domainname=smoke.test,dnssearch=smoke.test,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=udp:127.0.0.1:8007-:7 \
        -device virtio-net-pci,netdev=n0,mac=52:54:00:4b:56:01 \
        -qmp unix:"$tmp/qmp.sock",server=on,wait=off \
        "$@" </dev/null >"$tmp/console-$n.log" 2>&1 &
    qemu_pid=$!
    started=$(now)
}
# The serial console ends lines with CR LF.
console() { tr -d '\r' <"$tmp/console-$1.log"; }
# wait_line N PATTERN SECONDS: waits for a console line matching PATTERN (grep -E).
wait_line() {
    local deadline=$(($(date +%s) + $3))
    until console "$1" | grep -qE "$2"; do
        kill -0 "$qemu_pid" 2>/dev/null || fail "qemu exited before /$2/"
        (($(date +%s) < deadline)) || fail "no /$2/ within $3 s"
        sleep 0.2
    done
}
expect() { console "$1" | grep -qE "$2" || fail "expected /$2/"; }
qmp() {
    printf '{"execute":"qmp_capabilities"}\n{"execute":"%s"}\n' "$1" |
        socat -t 2 - UNIX-CONNECT:"$tmp/qmp.sock" >/dev/null
}
wait_exit() {
    local rc=0 deadline=$(($(date +%s) + $1))
    while kill -0 "$qemu_pid" 2>/dev/null; do
        (($(date +%s) < deadline)) || fail "qemu still running after $1 s"
        sleep 0.2
    done
    wait "$qemu_pid" || rc=$?
    qemu_pid=
    return "$rc"
}

# --- first boot ------------------------------------------------------------------------------
boot 1
wait_line 1 '^KVMTEST READY' 120
ready=$(since "$started")
expect 1 '^KVMTEST lease ip=10\.0\.2\.15 mask=24 router=10\.0\.2\.2 dns=10\.0\.2\.3 search=smoke\.test mtu=[0-9]* hostname=kvmtest-smoke domain=smoke\.test mac=52:54:00:4b:56:01 '
expect 1 '^KVMTEST configdrive label=config-2 dev=/dev/sr0 files=openstack/latest/meta_data\.json,openstack/latest/user_data'
sum=$(sha256sum "$tmp/cd/openstack/latest/user_data" | cut -d' ' -f1)
expect 1 "^KVMTEST file path=openstack/latest/user_data sha256=$sum"
expect 1 '^KVMTEST dns name=kvmtest\.example server=10\.0\.2\.3 answer=192\.0\.2\.7'
expect 1 '^KVMTEST boot count=1 '

exec 3<>/dev/tcp/127.0.0.1/8080
printf 'GET / HTTP/1.0\r\n\r\n' >&3
page=$(timeout 10 cat <&3) || true
exec 3<&-
grep -q 'kvmtest hostname=kvmtest-smoke' <<<"$page" || fail "HTTP page: $page"
echo_reply=$(echo kvmtest-ping | socat -t 3 - UDP:127.0.0.1:8007) || true
[[ $echo_reply == kvmtest-ping ]] || fail "UDP echo answered '$echo_reply'"

qmp system_powerdown
wait_exit 60 || fail "qemu exited $? after system_powerdown"
expect 1 '^KVMTEST powerdown$'

# --- second boot: counter kept on the overlay; the button ignored on request ----------------
boot 2 -fw_cfg name=opt/kvmtest,string=kvmtest.ignore_acpi=1
wait_line 2 '^KVMTEST READY' 120
expect 2 '^KVMTEST boot count=2 '
qmp system_powerdown
wait_line 2 '^KVMTEST powerdown ignored' 30
qmp quit
wait_exit 30 || true

echo "smoke: OK (machine $machine): boot to READY ${ready}s under TCG; guest says: $(console 1 | grep -o 'READY.*')"
