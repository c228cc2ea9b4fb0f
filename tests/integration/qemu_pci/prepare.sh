#!/bin/bash
# Build what the QEMU vfio-user-pci tests need into OUT (argument 1), as root:
#   OUT/root/               a minbase Debian trixie chroot with QEMU from trixie-backports
#                           (vfio-user-pci needs QEMU >= 10.1; bookworm has 7.2, trixie 10.0)
#   OUT/vmlinuz             Debian's stock amd64 kernel (8250_pci built in), unchanged
#   OUT/busybox             busybox-static (amd64) for the initramfs the harness writes
#   OUT/arm64/Image, OUT/arm64/busybox   the same for an arm64 virt guest (Debian's arm64
#                           kernel also has 8250_pci and pci-host-generic built in)
#   OUT/arm64/modules/      spi-thunderx.ko and at25.ko from that same package (the SPI
#                           controller test loads them; their vermagic must match the Image)
#   OUT/qemu-version        `qemu-system-x86_64 --version`, first line
# QEMU runs through the chroot's own dynamic loader (platpass.vmm.qemu_pci.qemu_in_root:
# no chroot(2) at run time, so sockets and files keep their host paths; firmware through
# -L). Cached by conftest.py under ~/.cache/platpass/qemu-pci/<hash of this file>.
set -euo pipefail
OUT=$(realpath -m "$1")
MIRROR=${PLATPASS_DEBIAN_MIRROR:-http://deb.debian.org/debian}
T0=$(date +%s.%N)
say() { printf '[prepare %6.1fs] %s\n' "$(echo "$(date +%s.%N) - $T0" | bc)" "$*"; }
rm -rf "$OUT" && mkdir -p "$OUT/debs"

debootstrap --variant=minbase trixie "$OUT/root" "$MIRROR" >"$OUT/debootstrap.log" 2>&1 \
  || { tail -30 "$OUT/debootstrap.log"; exit 1; }
say "debootstrap trixie: $(du -sh "$OUT/root" | cut -f1)"
echo "deb $MIRROR trixie-backports main" > "$OUT/root/etc/apt/sources.list.d/backports.list"
cp /etc/resolv.conf "$OUT/root/etc/resolv.conf"
chroot "$OUT/root" apt-get -o Dpkg::Use-Pty=0 update -qq
chroot "$OUT/root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
  --no-install-recommends -t trixie-backports qemu-system-x86 qemu-system-arm >/dev/null
chroot "$OUT/root" apt-get clean
say "qemu installed: $(du -sh "$OUT/root" | cut -f1)"
LD=$(ls "$OUT"/root/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2)
"$LD" --library-path "$OUT/root/usr/lib/x86_64-linux-gnu" \
  "$OUT/root/usr/bin/qemu-system-x86_64" --version | head -1 > "$OUT/qemu-version"
say "$(cat "$OUT/qemu-version")"

# The guest kernel and busybox come from the host's own (bookworm) archive.
cd "$OUT/debs"
KPKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-6/{print $2; exit}')
apt-get download -q "$KPKG" busybox-static 2>&1 | grep -v -e unsandboxed -e '^Get:' || true
dpkg-deb -x ${KPKG}_*.deb k
cp k/boot/vmlinuz-* "$OUT/vmlinuz"
ls k/lib/modules > "$OUT/kernel-release"
dpkg-deb -x busybox-static_*.deb b
cp b/bin/busybox "$OUT/busybox"
AKPKG=$(apt-cache depends linux-image-arm64:arm64 | awk '/Depends: linux-image-6/{print $2; exit}')
apt-get download -q "${AKPKG%:arm64}:arm64" busybox-static:arm64 2>&1 \
  | grep -v -e unsandboxed -e '^Get:' || true
mkdir -p "$OUT/arm64"
dpkg-deb -x ${AKPKG%:arm64}_*_arm64.deb ak
cp ak/boot/vmlinuz-* "$OUT/arm64/Image"
mkdir -p "$OUT/arm64/modules"
for m in drivers/spi/spi-thunderx.ko drivers/misc/eeprom/at25.ko; do
  f=$(ls ak/lib/modules/*/kernel/$m)   # fails (set -e) if the package compresses modules
  if grep -a -q -E 'depends=[[:alnum:]_]' "$f"; then
    echo "$m depends on other modules now: load those too" >&2; exit 1
  fi
  cp "$f" "$OUT/arm64/modules/"
done
dpkg-deb -x busybox-static_*_arm64.deb ab
cp ab/bin/busybox "$OUT/arm64/busybox"
cd "$OUT" && rm -rf debs
say "kernel $(cat kernel-release); total $(du -sh "$OUT" | cut -f1)"
