#!/usr/bin/env bash
# The baseline bench/startup measures kvm-manager against: the steps a classic shell
# entrypoint takes to turn a pod into a VM, done with the standard tools (curl, qemu-img, ip,
# sysctl, iptables or nft, dnsmasq, genisoimage or xorriso) and ending in `exec qemu`.
#
# It reads the same environment contract as kvm-manager (IMG_SOURCE, IMG_TARGET, IMAGE_DIR,
# PET_DIR, USERDATA, METADATA, RUNTIME_DIR, VM_IP, VM_GW, VM_CPUS, VM_MEMORY, ACCEL, QEMU) and
# produces an equivalent VM: a qcow2 overlay on the cached base image, a bridge with VM_GW/30
# and a tap at the pod's MTU, all-protocol DNAT of the pod IP (VNC and the HTTP port kept),
# SNAT of the VM's traffic, MSS clamping, DHCP and DNS for the VM, an OpenStack config drive
# (label config-2) with an instance id, the hostname, network data and the user data, and the
# same qemu command line. FIREWALL=iptables (default, one command per rule, as classic
# entrypoints did) or FIREWALL=nft (one `nft -f` transaction).
#
# It is a fair first start in a fresh pod, not a robust entrypoint: it does not converge on a
# container restart, verify downloads or shut the guest down gracefully (qemu is PID 1).
set -euo pipefail

IMAGE_DIR=${IMAGE_DIR:-/image}
PET_DIR=${PET_DIR:-/pet}
USERDATA=${USERDATA:-/userdata}
METADATA=${METADATA:-/metadata}
RUNTIME_DIR=${RUNTIME_DIR:-/run/kvm-manager}
IMG_TARGET=${IMG_TARGET:-${IMG_SOURCE##*/}}
VM_IP=${VM_IP:-192.168.254.2}
VM_GW=${VM_GW:-192.168.254.1}
VM_CPUS=${VM_CPUS:-1}
VM_MEMORY=${VM_MEMORY:-1024}
ACCEL=${ACCEL:-kvm}
QEMU=${QEMU:-qemu-system-x86_64}
FIREWALL=${FIREWALL:-iptables}
HTTP_PORT=${HTTP_PORT:-8080}
BRIDGE=br0 TAP=tap0

host=$(hostname)
mkdir -p "$IMAGE_DIR" "$PET_DIR" "$RUNTIME_DIR"

# Base image: download once into the shared volume.
base=$IMAGE_DIR/$IMG_TARGET
if [[ ! -f $base ]]; then
    curl -fsSL -o "$base.part" "$IMG_SOURCE"
    mv "$base.part" "$base"
fi

# The pet overlay: the VM's own writable disk on top of the base.
overlay=$PET_DIR/$host.qcow2
if [[ ! -f $overlay ]]; then
    qemu-img create -q -f qcow2 -b "$base" -F qcow2 "$overlay"
fi

# A MAC derived from the hostname and an instance id, both kept on the pet volume.
if [[ ! -f $PET_DIR/mac ]]; then
    printf '%s' "$host" | md5sum | sed 's/^\(..\)\(..\)\(..\).*/52:54:00:\1:\2:\3/' > "$PET_DIR/mac"
fi
mac=$(cat "$PET_DIR/mac")
if [[ ! -f $PET_DIR/instance-id ]]; then
    cat /proc/sys/kernel/random/uuid > "$PET_DIR/instance-id"
fi
instance_id=$(cat "$PET_DIR/instance-id")

# What the pod got from its CNI: uplink, address, MTU.
uplink=$(ip -4 route show default | awk '{print $5; exit}')
pod_ip=$(ip -4 -o addr show dev "$uplink" | awk '{split($4, a, "/"); print a[1]; exit}')
mtu=$(cat "/sys/class/net/$uplink/mtu")

# Bridge with the VM's gateway address, a tap for qemu on it.
ip link add "$BRIDGE" type bridge
ip link set "$BRIDGE" mtu "$mtu"
ip addr add "$VM_GW/30" dev "$BRIDGE"
ip link set "$BRIDGE" up
ip tuntap add dev "$TAP" mode tap vnet_hdr
ip link set "$TAP" mtu "$mtu" master "$BRIDGE" up
sysctl -qw net.ipv4.ip_forward=1

# The pod IP is the VM's: everything but VNC and the HTTP port goes to the VM.
case $FIREWALL in
iptables)
    iptables -t nat -A PREROUTING -i "$BRIDGE" -j RETURN
    iptables -t nat -A PREROUTING -d "$pod_ip" -p tcp -m multiport --dports "5900,$HTTP_PORT" -j RETURN
    iptables -t nat -A PREROUTING -d "$pod_ip" -j DNAT --to-destination "$VM_IP"
    iptables -t nat -A POSTROUTING -o "$uplink" -s "$VM_IP/30" -j SNAT --to-source "$pod_ip"
    iptables -t mangle -A FORWARD -p tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu
    ;;
nft)
    nft -f - <<EOF
table ip vm {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		iifname "$BRIDGE" return
		ip daddr $pod_ip tcp dport { 5900, $HTTP_PORT } return
		ip daddr $pod_ip dnat to $VM_IP
	}
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "$uplink" ip saddr $VM_IP/30 snat to $pod_ip
	}
	chain forward {
		type filter hook forward priority mangle; policy accept;
		tcp flags syn tcp option maxseg size set rt mtu
	}
}
EOF
    ;;
*)
    echo "FIREWALL must be iptables or nft" >&2
    exit 2
    ;;
esac

# DHCP (one static lease) and DNS (forwarding to the pod's resolvers) on the bridge only.
search=$(awk '$1 == "search" { $1 = ""; sub(/^ /, ""); gsub(/ /, ","); print; exit }' /etc/resolv.conf)
dnsmasq --interface="$BRIDGE" --bind-interfaces --except-interface=lo \
    --dhcp-authoritative --dhcp-range="$VM_IP,static,255.255.255.252,12h" \
    --dhcp-host="$mac,$VM_IP,$host" \
    --dhcp-option=option:router,"$VM_GW" --dhcp-option=option:dns-server,"$VM_GW" \
    --dhcp-option=option:mtu,"$mtu" ${search:+--dhcp-option=option:domain-search,"$search"} \
    --dhcp-leasefile="$RUNTIME_DIR/dnsmasq.leases" --pid-file="$RUNTIME_DIR/dnsmasq.pid" \
    --user=root

# Config drive: OpenStack layout, label config-2.
drive=$RUNTIME_DIR/config-drive
rm -rf "$drive"
mkdir -p "$drive/openstack/latest"
user_meta=
for f in "$METADATA" "$METADATA/meta-data" "$METADATA/meta_data"; do
    if [[ -f $f ]]; then
        user_meta=$(<"$f")
        user_meta=${user_meta#*\{}
        user_meta=${user_meta%\}*}
        break
    fi
done
printf '{"uuid": "%s", "hostname": "%s", "name": "%s"%s}\n' \
    "$instance_id" "$host" "$host" "${user_meta:+, $user_meta}" \
    > "$drive/openstack/latest/meta_data.json"
printf '{"links": [{"id": "eth0", "type": "phy", "ethernet_mac_address": "%s", "mtu": %s}], "networks": [{"id": "network0", "network_id": "network0", "type": "ipv4_dhcp", "link": "eth0"}], "services": []}\n' \
    "$mac" "$mtu" > "$drive/openstack/latest/network_data.json"
for f in "$USERDATA" "$USERDATA/user-data" "$USERDATA/user_data"; do
    if [[ -f $f ]]; then
        cp "$f" "$drive/openstack/latest/user_data"
        break
    fi
done
cp -r "$drive/openstack/latest" "$drive/openstack/2012-08-10"
iso=$RUNTIME_DIR/config-drive.iso
if command -v genisoimage > /dev/null; then
    genisoimage -quiet -R -J -V config-2 -o "$iso" "$drive"
else
    xorriso -as mkisofs -quiet -R -J -V config-2 -o "$iso" "$drive"
fi

# qemu replaces the shell as PID 1.
case $ACCEL in
kvm) cpu=host ;;
*) cpu=max ;;
esac
vhost=off
if [[ -w /dev/vhost-net ]]; then vhost=on; fi
exec "$QEMU" -name "guest=$host,debug-threads=on" -nodefaults -no-user-config \
    -machine "pc,accel=$ACCEL" -cpu "$cpu" -smp "$VM_CPUS" -m "${VM_MEMORY}M" -rtc base=utc \
    -drive "file=$overlay,if=none,id=disk0,format=qcow2,discard=unmap" \
    -device virtio-blk-pci,drive=disk0,bootindex=1 \
    -drive "file=$iso,if=none,id=cd0,media=cdrom,readonly=on,format=raw" \
    -device ide-cd,drive=cd0,bus=ide.1,unit=0 \
    -netdev "tap,id=net0,ifname=$TAP,script=no,downscript=no,vhost=$vhost" \
    -device "virtio-net-pci,netdev=net0,mac=$mac,host_mtu=$mtu" \
    -device VGA -usb -device usb-tablet -vnc :0 \
    -chardev stdio,id=console0,signal=off -serial chardev:console0 \
    -qmp "unix:$RUNTIME_DIR/qmp.sock,server=on,wait=off" -msg timestamp=off "$@"
