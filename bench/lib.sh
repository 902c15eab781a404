# Shared setup for bench/dns and bench/dhcp: node, pod and VM network namespaces like the
# integration tests (tests/integration/vmnet.rs), named kmbench-*, removed on exit.
# Only private addresses, only on interfaces inside these namespaces.

BIN=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/x86_64-unknown-linux-gnu/release/kvm-manager}
NODE=kmbench-node POD=kmbench-pod VM=kmbench-vm
NODE_IP=10.233.0.1 POD_IP=10.233.0.2
VM_IP=192.168.254.2 VM_GW=192.168.254.1 VM_MAC=52:54:00:be:4c:01
WORK=$(mktemp -d)
PIDS=()

cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for ns in $VM $POD $NODE; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

setup_namespaces() {
    for ns in $NODE $POD $VM; do ip netns del "$ns" 2>/dev/null || true; ip netns add "$ns"; done
    ip -n $NODE link add kmbn mtu 1450 type veth peer name eth0 netns $POD mtu 1450
    ip -n $NODE addr add $NODE_IP/24 dev kmbn
    ip -n $POD addr add $POD_IP/24 dev eth0
    ip -n $POD link add kvmbr0 mtu 1450 type bridge
    ip -n $POD addr add $VM_GW/30 dev kvmbr0
    ip -n $POD link add kmbv mtu 1450 type veth peer name eth0 netns $VM
    ip -n $POD link set kmbv master kvmbr0
    ip -n $VM link set eth0 address $VM_MAC
    for l in "$NODE kmbn" "$POD eth0" "$POD kvmbr0" "$POD kmbv" "$VM eth0"; do ip -n ${l% *} link set ${l#* } up; done
    for ns in $NODE $POD $VM; do ip -n $ns link set lo up; done
    ip -n $POD route add default via $NODE_IP
    mkdir -p "$WORK/pet"
    printf 'search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver %s\noptions ndots:5\n' \
        $NODE_IP > "$WORK/resolv.conf"
}

# `kvm-manager network` in the pod namespace (it reuses the bridge, adds its tap and NAT and
# serves DHCP and DNS), reading $WORK/resolv.conf as /etc/resolv.conf; waits until it serves.
start_ours() {
    ip netns exec $POD unshare --mount sh -c 'mount --bind "$0" /etc/resolv.conf && exec "$@"' \
        "$WORK/resolv.conf" env VM_MAC=$VM_MAC PET_DIR="$WORK/pet" HTTP_PORT=0 \
        LOG_LEVEL=warn "$BIN" network > "$WORK/ours.log" 2>&1 &
    OURS=$!
    PIDS+=($OURS)
    for _ in $(seq 100); do
        ip netns exec $POD ss -Hlnu | grep -q "$VM_GW.*:53 " && return 0
        sleep 0.05
    done
    echo "kvm-manager did not start:" >&2; cat "$WORK/ours.log" >&2; exit 1
}

stop() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}
