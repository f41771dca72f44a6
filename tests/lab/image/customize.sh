#!/bin/sh
# mmdebstrap customize hook for the lab guest image (runs on the build host as root).
#   $1  the image root tree   $2  the folder that receives the boot files for QEMU
# Builds the kernel's sample mdev drivers for exactly the image's kernel, installs the lab's
# configuration files, and makes the GRUB core image that QEMU boots as its "kernel".
set -eu
root=$1
out=$2
recipe=$(cd "$(dirname "$0")" && pwd)
in_root() { chroot "$root" "$@"; }

step() { echo "image: $*"; }

krel=$(ls "$root/lib/modules")
[ "$(echo "$krel" | wc -l)" -eq 1 ] || { echo "image: expected one kernel, found: $krel" >&2; exit 1; }
in_root test -e "/lib/modules/$krel/build/Makefile" \
  || { echo "image: no linux-headers for kernel $krel in the image" >&2; exit 1; }
step "kernel $krel with matching headers"

step "copying the lab's configuration files"
cp -a --no-preserve=ownership "$recipe/rootfs/." "$root/"

step "building samples/vfio-mdev (mtty, mdpy, mbochs) for $krel"
src=/usr/src/vfio-mdev-samples
tarball=$(ls "$root"/usr/src/linux-source-*.tar.xz)
topdir=$(basename "$tarball" .tar.xz)
tar -C "$root/usr/src" -xJf "$tarball" "$topdir/samples/vfio-mdev"
cp "$root/usr/src/$topdir/samples/vfio-mdev/"*.c "$root/usr/src/$topdir/samples/vfio-mdev/"*.h "$root$src/"
rm -rf "${root:?}/usr/src/$topdir"
in_root make -s -C "/lib/modules/$krel/build" M="$src" modules
install -d "$root/lib/modules/$krel/updates/vfio-mdev"
install -m 644 "$root$src"/*.ko "$root/lib/modules/$krel/updates/vfio-mdev/"
in_root make -s -C "/lib/modules/$krel/build" M="$src" clean
in_root depmod "$krel"
for m in mtty mdpy mbochs; do
  in_root modinfo -k "$krel" -F vermagic "$m" | grep -q "^$krel " \
    || { echo "image: module $m was not built for $krel" >&2; exit 1; }
done
# The source tarball was only needed for the samples.
in_root dpkg --purge linux-source-6.1 >/dev/null

# Ansible's remote temporary folder, made ahead so the first task does not warn about its mode.
install -d -m 700 "$root/root/.ansible" "$root/root/.ansible/tmp"

step "enabling services"
in_root systemctl enable systemd-networkd.service gpuvirt-lab-keys.service >/dev/null 2>&1
in_root systemctl mask systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer \
  e2scrub_all.timer e2scrub_reap.service >/dev/null 2>&1
: > "$root/etc/machine-id"

step "a first initramfs with the root disk's modules only"
# The kernel package made the first initramfs with initramfs-tools' default, MODULES=most: about 30 MB,
# which the guest's kernel unpacks and its udev loads from on every boot under QEMU's software
# emulation (a dozen seconds) until the collection rebuilds it there (MODULES=dep, from the guest's own
# devices). The lab's root is ext4 on virtio-blk: those modules are all the first boot needs.
first=/tmp/initramfs-first
rm -rf "$root$first"
cp -a "$root/etc/initramfs-tools" "$root$first"
sed -i 's/^MODULES=.*/MODULES=list/' "$root$first/initramfs.conf" "$root$first"/conf.d/*.conf
printf '%s\n' virtio_pci virtio_blk ext4 crc32c_generic >> "$root$first/modules"
in_root mkinitramfs -d "$first" -o "/boot/initrd.img-$krel" "$krel"
rm -rf "$root$first"

step "GRUB: modules in /boot/grub, a first grub.cfg, the core image for QEMU"
install -d "$root/boot/grub"
cp -a "$root/usr/lib/grub/i386-pc" "$root/boot/grub/"
# update-grub in the guest rewrites this file from /etc/default/grub; until then boot plainly.
cat > "$root/boot/grub/grub.cfg" <<CFG
# Written when the lab image was built; the guest's update-grub replaces it.
set timeout=0
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
insmod ext2
search --no-floppy --label gpuvirt-lab --set=root
linux /boot/vmlinuz-$krel root=LABEL=gpuvirt-lab ro console=ttyS0,115200n8 intel_iommu=off
initrd /boot/initrd.img-$krel
boot
CFG
cat > "$root/tmp/grub-early.cfg" <<'CFG'
search --no-floppy --label gpuvirt-lab --set=root
set prefix=($root)/boot/grub
CFG
in_root grub-mkimage -O i386-pc -o /tmp/core.img -c /tmp/grub-early.cfg -p /boot/grub \
  biosdisk ext2 part_msdos search search_label search_fs_uuid normal configfile linux serial \
  terminal echo test gzio
cat "$root/usr/lib/grub/i386-pc/lnxboot.img" "$root/tmp/core.img" > "$out/grub.bin"
rm -f "$root/tmp/core.img" "$root/tmp/grub-early.cfg"
echo "$krel" > "$out/kernel-release"
cp "$root/etc/ssh/ssh_host_ed25519_key.pub" "$out/ssh_host_ed25519_key.pub"

step "cleaning apt lists and caches"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
  "$root"/var/log/*.log "$root"/var/log/apt/*
