#!/usr/bin/env bash
# Builds the tiny test guest: a Debian kernel and a busybox initramfs on a syslinux-booted
# vfat "superfloppy", converted to a ~12 MiB qcow2. Its /init (tests/guest/init) reports what
# it sees on the serial console as `KVMTEST ...` lines.
#
# Prints the image path on stdout (logs go to stderr), so callers do `img=$(build.sh)`.
# Cached: the image is rebuilt only when this script, init or udhcpc.script changed (their
# hash is kept in "$image.inputs"); downloaded packages are kept in "$(dirname image)/debs".
# Concurrent callers serialize on a lock file and then share the result.
#
# Env: KVMTEST_GUEST_IMAGE   output path (default <repo>/.cache/guest/guest.qcow2)
#      KVMTEST_GUEST_KERNEL  kernel package (default: what linux-image-amd64 depends on)
# Needs (scripts/deps): apt-get, dpkg, kmod (depmod), cpio, dosfstools, mtools, syslinux,
# qemu-utils (qemu-img).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
image=${KVMTEST_GUEST_IMAGE:-$repo/.cache/guest/guest.qcow2}
cache=$(dirname "$image")
debs=$cache/debs
mkdir -p "$cache" "$debs"

log() { echo "guest/build.sh: $*" >&2; }

inputs=$(cat "$here/build.sh" "$here/init" "$here/udhcpc.script" | sha256sum | cut -d' ' -f1)

exec 9>"$cache/.lock"
flock 9
if [[ -f $image && $(cat "$image.inputs" 2>/dev/null) == "$inputs" ]]; then
    echo "$image"
    exit 0
fi
log "building $image"

for tool in depmod cpio mkfs.vfat mcopy syslinux qemu-img; do
    command -v "$tool" >/dev/null || { log "missing $tool: run scripts/deps"; exit 1; }
done

work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# --- packages -------------------------------------------------------------------------------
# toybox (with the glibc it links against) is only here for `netcat -u`: busybox-static's nc
# has no UDP mode, and the guest must answer UDP echo.
# A machine whose package lists were never fetched (a fresh container) knows no packages yet.
if ! apt-cache show linux-image-amd64 >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]]; then
    log "apt has no package lists yet: apt-get update"
    apt-get update -qq >&2
fi
kernel_pkg=${KVMTEST_GUEST_KERNEL:-$(apt-cache depends linux-image-amd64 2>/dev/null |
    awk '/Depends: linux-image-[0-9]/ { print $2; exit }')}
[[ -n $kernel_pkg ]] || { log "cannot resolve linux-image-amd64: run apt-get update"; exit 1; }
pkgs=("$kernel_pkg" busybox-static toybox libc6 libcrypt1)
# qemu-ga (Debian's qemu-guest-agent) and the shared libraries it links against: the list is
# its package's dependency closure, the libraries copied are what `ldd` says it loads.
agent_pkgs=(qemu-guest-agent libglib2.0-0 libnuma1 libudev1 liburing2 libffi8 libpcre2-8-0
    libmount1 libselinux1 libblkid1 zlib1g libgcc-s1)
pkgs+=("${agent_pkgs[@]}")
pkgs+=(systemd-boot-efi) # issue 20: the UEFI variant's boot loader
pkgs+=(shim-signed grub-efi-amd64-signed) # issue 20: the Secure Boot variant's signed loaders
pkgs+=(dosfstools) # issue 22: fsck.fat, the guest's own check of its boot disk
for pkg in "${pkgs[@]}"; do
    if ! compgen -G "$debs/${pkg}_*.deb" >/dev/null; then
        log "downloading $pkg"
        # apt's sandbox user may not be able to write to the cache; it falls back to root.
        (cd "$debs" && apt-get download -q "$pkg" 2>&1 | grep -v 'unsandboxed' >&2) || true
        compgen -G "$debs/${pkg}_*.deb" >/dev/null || { log "apt-get download $pkg failed"; exit 1; }
    fi
    deb=$(printf '%s\n' "$debs/${pkg}"_*.deb | sort -V | tail -n1)
    dpkg-deb -x "$deb" "$work/pkgs"
done
kver=$(basename "$(ls -d "$work"/pkgs/lib/modules/*/ | head -n1)")
log "kernel $kver"

# --- initramfs ------------------------------------------------------------------------------
rd=$work/initrd
mkdir -p "$rd"/{bin,dev,proc,sys,run,tmp,mnt,etc,lib64,lib/x86_64-linux-gnu,lib/modules/"$kver"}
cp "$work/pkgs/bin/busybox" "$rd/bin/busybox"
for applet in $("$rd/bin/busybox" --list); do
    [[ $applet == busybox ]] || ln -s busybox "$rd/bin/$applet"
done
cp "$work/pkgs/bin/toybox" "$rd/bin/toybox"
gnu=$work/pkgs/lib/x86_64-linux-gnu
cp -L "$gnu/ld-linux-x86-64.so.2" "$rd/lib64/"
for lib in libc.so.6 libm.so.6 libcrypt.so.1; do
    cp -L "$gnu/$lib" "$rd/lib/x86_64-linux-gnu/"
done
# qemu-ga: the binary, then every library ldd resolves for it against the unpacked packages
# (not the host's: the guest gets Debian 12's), copied to the same place in the initramfs.
install -m 0755 "$work/pkgs/usr/sbin/qemu-ga" "$rd/bin/qemu-ga"
agent_libs=$(LD_LIBRARY_PATH="$gnu:$work/pkgs/usr/lib/x86_64-linux-gnu" \
    "$gnu/ld-linux-x86-64.so.2" --list "$work/pkgs/usr/sbin/qemu-ga" |
    awk '$2 == "=>" && $3 ~ /^\// { print $3 }')
for lib in $agent_libs; do
    name=${lib##*/}
    [[ $lib == "$work"/pkgs/* ]] || { log "qemu-ga needs $name, not in the packages: add it to agent_pkgs"; exit 1; }
    cp -L "$lib" "$rd/lib/x86_64-linux-gnu/$name"
done
# guest-get-osinfo reads os-release; guest-ssh-add-authorized-keys looks users up in passwd.
cat >"$rd/etc/os-release" <<'EOF'
NAME="kvmtest"
ID=kvmtest
VERSION_ID=1
VERSION="1 (test guest)"
PRETTY_NAME="kvmtest 1"
EOF
cat >"$rd/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
debian:x:1000:1000:debian:/home/debian:/bin/sh
EOF
printf 'root:x:0:\ndebian:x:1000:\n' >"$rd/etc/group"
mkdir -p "$rd/root" "$rd/home/debian"
# qemu-ga's guest-shutdown runs /sbin/shutdown -P +0 ...: say so, unmount, power off.
mkdir -p "$rd/sbin"
cat >"$rd/sbin/shutdown" <<'EOF'
#!/bin/sh
echo "KVMTEST powerdown agent" >/dev/console
umount /mnt/cd /boot /mnt/tick 2>/dev/null
sync
poweroff -f
EOF
chmod 0755 "$rd/sbin/shutdown"
# --- issue 22: the guest's own fsck ---
# Debian's fsck.fat (busybox has none), which init runs read-only (-n) on the boot disk before
# mounting it. Like qemu-ga, every library ld.so resolves for it must come from the packages.
install -m 0755 "$work/pkgs/sbin/fsck.fat" "$rd/bin/fsck.fat"
fsck_libs=$(LD_LIBRARY_PATH="$gnu" "$gnu/ld-linux-x86-64.so.2" --list "$work/pkgs/sbin/fsck.fat" |
    awk '$2 == "=>" && $3 ~ /^\// { print $3 }')
for lib in $fsck_libs; do
    [[ -e $rd/lib/x86_64-linux-gnu/${lib##*/} ]] || { log "fsck.fat needs ${lib##*/}, not in the initramfs"; exit 1; }
done
# fsck.fat converts names from the FAT's codepage (850 by default) with iconv: glibc's module
# for it and the configuration naming it, where glibc looks for them.
gconv=usr/lib/x86_64-linux-gnu/gconv
mkdir -p "$rd/$gconv/gconv-modules.d"
cp "$work/pkgs/$gconv/IBM850.so" "$work/pkgs/$gconv/gconv-modules" "$rd/$gconv/"
cp "$work/pkgs/$gconv/gconv-modules.d/"*.conf "$rd/$gconv/gconv-modules.d/"
# --- end issue 22 ---
install -m 0755 "$here/init" "$rd/init"
install -m 0755 "$here/udhcpc.script" "$rd/etc/udhcpc.script"

# Modules the guest needs, loaded by init in dependency order (deps first) from a list we
# compute here with depmod, so the guest needs no modprobe logic.
wanted=(
    virtio_pci virtio_net virtio_blk virtio_scsi # virtio NIC, boot disk, optional SCSI cdrom
    ata_piix ahci sr_mod sd_mod                  # IDE (pc) / SATA (q35) cdrom or disk
    isofs                                        # config drive
    vfat nls_cp437 nls_ascii                     # boot disk (FAT defaults: cp437, ascii)
    button evdev                                 # ACPI power button as an input device
    qemu_fw_cfg                                  # -fw_cfg opt/kvmtest options
    virtio_console                               # the guest agent's virtio-serial port
    brd ext4 crc32c_generic                      # option tick: a freezable ext2 on a RAM disk
)
# --- issue 24: shares ---
wanted+=(9p 9pnet_virtio virtiofs)                # option share: 9p (qemu -virtfs) and virtio-fs
# --- end issue 24 ---
wanted+=(efivarfs) # issue 20: UEFI variables (option efivar)
mods=$work/pkgs/lib/modules/$kver
depmod -b "$work/pkgs" "$kver"
# modules.dep lists each module's full dependency closure; order it depth first, deps first.
builtin_names=$(sed 's|.*/||; s|\.ko$||; s|-|_|g' "$mods/modules.builtin")
ordered=$(awk -v wanted="${wanted[*]}" -v builtin="$builtin_names" '
    function visit(mod,   n, i, d) {
        if (mod in seen) return
        seen[mod] = 1
        n = split(deps[mod], d, " ")
        for (i = 1; i <= n; i++) visit(d[i])
        print mod
    }
    {
        mod = $1; sub(/:$/, "", mod)
        name = mod; sub(/.*\//, "", name); sub(/\.ko$/, "", name); gsub(/-/, "_", name)
        path[name] = mod
        $1 = ""; deps[mod] = $0
    }
    END {
        nb = split(builtin, b, "\n"); for (i = 1; i <= nb; i++) isbuiltin[b[i]] = 1
        nw = split(wanted, w, " ")
        for (i = 1; i <= nw; i++) {
            if (w[i] in path) visit(path[w[i]])
            else if (!(w[i] in isbuiltin)) { print "missing " w[i] > "/dev/stderr"; exit 1 }
        }
    }' "$mods/modules.dep") || { log "a module the guest needs is missing from $kver"; exit 1; }
mapfile -t order <<<"$ordered"
for mod in "${order[@]}"; do
    mkdir -p "$rd/lib/modules/$kver/$(dirname "$mod")"
    cp "$mods/$mod" "$rd/lib/modules/$kver/$mod"
    echo "/lib/modules/$kver/$mod" >>"$rd/etc/modules.load"
done
log "modules: $(printf '%s ' "${order[@]##*/}")"
# --- issue 20: efivarfs only under UEFI -------------------------------------------------------
# efivarfs refuses to load without EFI: init loads it itself when /sys/firmware/efi exists.
sed -i '/efivarfs/d' "$rd/etc/modules.load"

(cd "$rd" && find . -print0 | sort -z | cpio --null -o -H newc --quiet -R 0:0) | gzip -9 >"$work/initrd.gz"

# --- boot disk ------------------------------------------------------------------------------
# A whole-disk vfat (no partition table): SeaBIOS boots syslinux from its boot sector, and the
# guest mounts /dev/vda read-write to keep its boot counter.
cat >"$work/syslinux.cfg" <<'EOF'
DEFAULT kvmtest
PROMPT 0
TIMEOUT 0
LABEL kvmtest
  KERNEL vmlinuz
  INITRD initrd.gz
  APPEND console=ttyS0,115200 quiet panic=-1
EOF
raw=$work/disk.img
truncate -s 64M "$raw"
mkfs.vfat -n KVMTEST "$raw" >/dev/null
mcopy -i "$raw" "$work/pkgs/boot/vmlinuz-$kver" ::vmlinuz
mcopy -i "$raw" "$work/initrd.gz" ::initrd.gz
mcopy -i "$raw" "$work/syslinux.cfg" ::syslinux.cfg
syslinux --install "$raw"
qemu-img convert -q -f raw -O qcow2 "$raw" "$work/guest.qcow2"

# --- issue 20: UEFI variant -------------------------------------------------------------------
# guest-uefi.qcow2 beside the image: the same vfat superfloppy plus systemd-boot as the UEFI
# removable-media loader (\EFI\BOOT\BOOTX64.EFI), which OVMF finds on a partitionless FAT
# disk; its entry boots the same kernel and initrd. (SeaBIOS still boots it with syslinux.)
uefi_image=${image%.qcow2}-uefi.qcow2
mmd -i "$raw" ::EFI ::EFI/BOOT ::loader ::loader/entries
mcopy -i "$raw" "$work/pkgs/usr/lib/systemd/boot/efi/systemd-bootx64.efi" ::EFI/BOOT/BOOTX64.EFI
printf 'default kvmtest.conf\ntimeout 0\n' >"$work/loader.conf"
printf 'title kvmtest\nlinux /vmlinuz\ninitrd /initrd.gz\noptions console=ttyS0,115200 quiet panic=-1\n' >"$work/kvmtest.conf"
mcopy -i "$raw" "$work/loader.conf" ::loader/loader.conf
mcopy -i "$raw" "$work/kvmtest.conf" ::loader/entries/kvmtest.conf
qemu-img convert -q -f raw -O qcow2 "$raw" "$work/guest-uefi.qcow2"
mv -f "$work/guest-uefi.qcow2" "$uefi_image"
# guest-secure.qcow2: Secure Boot's chain, all signed: Debian's shim (signed by Microsoft) as
# BOOTX64.EFI, which verifies Debian's signed GRUB beside it, which verifies the (signed)
# kernel. The same grub.cfg where each GRUB build looks for it. Needs 512 MiB of guest
# memory: OVMF's Secure Boot build plus GRUB leave 256 MiB too little to unpack the kernel.
secure_image=${image%.qcow2}-secure.qcow2
mcopy -o -i "$raw" "$work/pkgs/usr/lib/shim/shimx64.efi.signed" ::EFI/BOOT/BOOTX64.EFI
mcopy -i "$raw" "$work/pkgs/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed" ::EFI/BOOT/grubx64.efi
printf 'set timeout=0\nlinux /vmlinuz console=ttyS0,115200 quiet panic=-1\ninitrd /initrd.gz\nboot\n' >"$work/grub.cfg"
mmd -i "$raw" ::EFI/debian ::boot ::boot/grub
for dir in EFI/BOOT EFI/debian boot/grub; do mcopy -i "$raw" "$work/grub.cfg" "::$dir/grub.cfg"; done
qemu-img convert -q -f raw -O qcow2 "$raw" "$work/guest-secure.qcow2"
mv -f "$work/guest-secure.qcow2" "$secure_image"

mv -f "$work/guest.qcow2" "$image"
echo "$inputs" >"$image.inputs"
log "done: $(du -h "$image" | cut -f1) ($(du -h "$work/initrd.gz" | cut -f1) initrd)"
echo "$image"
