#!/bin/bash
# Build the arm64 real-kernel test image for tests/integration/kernel into OUT (argument 1):
#   OUT/Image                Debian's arm64 kernel, unchanged
#   OUT/base.cpio.gz         busybox-static + arm64 python3.11 (stdlib subset) + python3-libfdt
#                            + the UIO/VFIO modules Debian does not ship (built here)
#   OUT/virt-platform.dtb    QEMU virt's DTB with pl031/pl061 turned into platform devices
#   OUT/virt-amba.dtb        the same DTB left as QEMU makes it (AMBA primecell devices)
#   OUT/kbuild/              Debian's headers + kbuild (relocatable), vfio-platform-base's
#                            sources with the reset fix and checkpatch.pl, for kmod/'s tests
# The test fixture appends a second cpio (platpass + the guest scripts) at run time, so this
# runs only when this file changes (the fixture keys its cache on a hash of it).
set -euo pipefail
OUT=$(realpath -m "$1")
HERE=$(cd "$(dirname "$0")" && pwd)
W=$OUT.work
T0=$(date +%s.%N)
say() { printf '[prepare %6.1fs] %s\n' "$(echo "$(date +%s.%N) - $T0" | bc)" "$*"; }
rm -rf "$W" "$OUT" && mkdir -p "$W/debs" "$W/x" "$OUT"

# Same machine options as conftest.QEMU_MACHINE (the DTB must match the machine it boots).
QEMU_OPTS=(-cpu cortex-a57 -smp 2 -m 1G -nic none -display none)

# The whole stdlib goes in (platpass's layers import what they like), less what a headless
# test guest never needs; extension modules whose libraries are absent simply fail to import.
PY_SKIP="test idlelib tkinter turtledemo ensurepip lib2to3 pydoc_data distutils config-3.11-aarch64-linux-gnu"
PY_SKIP_SO="_test _ctypes_test xxlimited _xx _curses readline _dbm nis _tkinter ossaudiodev"

# ------------------------------------------------------------------ packages
cd "$W/debs"
KPKG=$(apt-cache depends linux-image-arm64:arm64 | awk '/Depends: linux-image-6/{print $2; exit}')
KPKG=${KPKG%:arm64}
ABI=${KPKG#linux-image-}; ABI=${ABI%-arm64}
KVER=$(apt-cache show --no-all-versions "$KPKG:arm64" | awk '/^Version:/{print $2; exit}')
say "kernel $KPKG $KVER"
apt-get download -q "$KPKG:arm64=$KVER" "linux-headers-$ABI-arm64:arm64=$KVER" \
  "linux-headers-$ABI-common=$KVER" "linux-kbuild-6.1:amd64=$KVER" "linux-source-6.1=$KVER" \
  busybox-static:arm64 python3.11-minimal:arm64 libpython3.11-minimal:arm64 \
  libpython3.11-stdlib:arm64 libc6:arm64 zlib1g:arm64 libexpat1:arm64 libffi8:arm64 \
  python3-libfdt:arm64 2>&1 | grep -v -e unsandboxed -e '^Get:' || true
say "downloaded $(du -sh . | cut -f1)"
cd "$W"

# ------------------------------------------------------------------ kernel
dpkg-deb -x debs/${KPKG}_*_arm64.deb x/kernel
KREL=$(ls x/kernel/lib/modules)
cp "x/kernel/boot/vmlinuz-$KREL" "$OUT/Image"
echo "$KREL" > "$OUT/kernel-release"

# ------------------------------------------------------------------ modules Debian lacks
# uio_pdrv_genirq, vfio-platform(-base), vfio-amba are not built by Debian for arm64, and its
# vfio.ko has no no-IOMMU mode: rebuild them from the matching linux-source with the cross gcc.
for d in debs/linux-headers-*.deb debs/linux-kbuild-*.deb; do dpkg-deb -x "$d" x/hdr; done
H=$W/x/hdr/usr/src/linux-headers-$KREL
sed -i "s#^include /usr/src/#include $W/x/hdr/usr/src/#" "$H/Makefile"
dpkg-deb --fsys-tarfile debs/linux-source-6.1_*_all.deb | tar -xO ./usr/src/linux-source-6.1.tar.xz \
  | tar -xJ -C x --wildcards 'linux-source-6.1/drivers/uio/uio_pdrv_genirq.c' 'linux-source-6.1/drivers/vfio/*' \
    'linux-source-6.1/scripts/checkpatch.pl' 'linux-source-6.1/scripts/spelling.txt' \
    'linux-source-6.1/scripts/const_structs.checkpatch'
S=x/linux-source-6.1/drivers
mkdir -p kmod
cp $S/vfio/{vfio_main.c,iova_bitmap.c,container.c,vfio.h} \
   $S/vfio/platform/{vfio_platform.c,vfio_amba.c,vfio_platform_common.c,vfio_platform_irq.c,vfio_platform_private.h} \
   $S/uio/uio_pdrv_genirq.c kmod/
# Upstream 168a9c91fe0a: a device without a reset handler must probe when reset_required=0.
# Debian's 6.1 returns the lookup error regardless, so every pl031/pl061 probe fails (-ENOENT).
python3 - kmod/vfio_platform_common.c <<'PY'
import sys
path = sys.argv[1]
src = open(path).read()
old = ("\t\t\tvdev->name);\n\treturn ret;\n}\nEXPORT_SYMBOL_GPL(vfio_platform_init_common);")
new = ("\t\t\tvdev->name);\n\t/* platpass: missing reset is fatal only when required */\n"
       "\treturn vdev->reset_required ? ret : 0;\n}\nEXPORT_SYMBOL_GPL(vfio_platform_init_common);")
if src.count(old) != 1:
    sys.exit(f"{path}: reset_required fix does not apply")
open(path, "w").write(src.replace(old, new))
PY
cat > kmod/Kbuild <<'KB'
ccflags-y += -DCONFIG_VFIO_NOIOMMU=1
obj-m += vfio.o vfio-platform-base.o vfio-platform.o vfio-amba.o uio_pdrv_genirq.o
vfio-y := vfio_main.o iova_bitmap.o container.o
vfio-platform-base-y := vfio_platform_common.o vfio_platform_irq.o
vfio-platform-y := vfio_platform.o
vfio-amba-y := vfio_amba.o
KB
make -s -C "$H" M="$W/kmod" ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu- -j"$(nproc)" modules 2>&1 \
  | grep -v 'Skipping BTF' || true
ls kmod/vfio.ko kmod/vfio-platform-base.ko kmod/vfio-platform.ko kmod/vfio-amba.ko kmod/uio_pdrv_genirq.ko >/dev/null
say "modules built"
# What building the project's kmod/ needs at test time (kernel_harness.build_kmod): the
# headers tree, its Makefile made relative so the directory can move, and vfio-platform-base.
mkdir -p "$OUT/kbuild/vfio-platform"
cp -a x/hdr/usr "$OUT/kbuild/"
printf 'include $(dir $(realpath $(lastword $(MAKEFILE_LIST))))../linux-headers-%s-common/Makefile\n' \
  "${KREL%-arm64}" > "$OUT/kbuild/usr/src/linux-headers-$KREL/Makefile"
cp kmod/{vfio_platform_common.c,vfio_platform_irq.c,vfio_platform_private.h} "$OUT/kbuild/vfio-platform/"
mkdir -p "$OUT/kbuild/scripts"   # the kernel's checkpatch.pl, run on kmod/ by the tests
cp x/linux-source-6.1/scripts/{checkpatch.pl,spelling.txt,const_structs.checkpatch} "$OUT/kbuild/scripts/"

# ------------------------------------------------------------------ rootfs
R=$W/rootfs
mkdir -p x/stage $R/{bin,sbin,dev,proc,sys,tmp,run,root,etc,usr/bin,lib/modules/platpass,lib/modules/debian}
for d in busybox-static python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 zlib1g \
         libexpat1 libffi8 python3-libfdt; do
  dpkg-deb -x debs/${d}_*_arm64.deb x/stage
done
cp x/stage/bin/busybox $R/bin/
cp x/stage/usr/bin/python3.11 $R/usr/bin/ && ln -s python3.11 $R/usr/bin/python3
mkdir -p $R/lib/aarch64-linux-gnu $R/usr/lib/aarch64-linux-gnu
cp -a x/stage/lib/ld-linux-aarch64.so.1 $R/lib/
for so in ld-linux-aarch64.so.1 libc.so.6 libm.so.6 libz.so.1 'libz.so.1.*' libexpat.so.1 'libexpat.so.1.*' 'libffi.so.8*'; do
  for f in x/stage/lib/aarch64-linux-gnu/$so x/stage/usr/lib/aarch64-linux-gnu/$so; do
    [ -e "$f" ] && cp -a "$f" "$R/${f#x/stage/}"
  done
done
# pylibfdt: Debian's arm64 build (libfdt linked in) lets the firmware loader run in the guest.
mkdir -p $R/usr/lib/python3/dist-packages
cp x/stage/usr/lib/python3/dist-packages/libfdt.py x/stage/usr/lib/python3/dist-packages/_libfdt*.so \
   $R/usr/lib/python3/dist-packages/
rm -f x/stage/usr/lib/python3.11/sitecustomize.py
cp -a x/stage/usr/lib/python3.11 $R/usr/lib/
for d in $PY_SKIP; do rm -rf "$R/usr/lib/python3.11/$d"; done
for m in $PY_SKIP_SO; do rm -f $R/usr/lib/python3.11/lib-dynload/$m*.so; done
find $R/usr/lib/python3.11 -name __pycache__ -prune -exec rm -rf {} +
qemu-aarch64 -L x/stage x/stage/usr/bin/python3.11 -m compileall -q -j"$(nproc)" \
  --invalidation-mode unchecked-hash -s "$R" -p / "$R/usr/lib/python3.11" >/dev/null || true
PYTHONPATH=$R/usr/lib/python3/dist-packages qemu-aarch64 -L "$R" "$R/usr/bin/python3" -c \
  "import sys, os, mmap, select, socket, ctypes, json, concurrent.futures, asyncio, libfdt; print('qemu-user check: python', sys.version.split()[0], 'libfdt ok')"
say "python: $(find $R/usr/lib/python3.11 -name '*.py' | wc -l) stdlib files"
KM=x/kernel/lib/modules/$KREL/kernel/drivers
# Debian's own vfio.ko and vfio_iommu_type1.ko (no no-IOMMU mode) for kmod/'s emulated IOMMU.
cp $KM/uio/uio.ko $KM/vfio/vfio_virqfd.ko $KM/vfio/vfio.ko $KM/vfio/vfio_iommu_type1.ko \
   $R/lib/modules/debian/
cp kmod/*.ko $R/lib/modules/platpass/
aarch64-linux-gnu-strip --strip-debug $R/lib/modules/platpass/*.ko
cp "$HERE/guest/init" $R/init && chmod 755 $R/init
(cd "$R" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -6 -n > "$OUT/base.cpio.gz"
say "base initramfs $(du -h --apparent-size "$OUT/base.cpio.gz" | cut -f1)"

# ------------------------------------------------------------------ device trees
# QEMU's dumped blob does not boot as is (no console); a dtc round trip fixes that.
qemu-system-aarch64 -M "virt,dumpdtb=$W/virt.dtb" "${QEMU_OPTS[@]}" 2>/dev/null
dtc -q -I dtb -O dts -o "$W/virt.dts" "$W/virt.dtb"
sed -e 's/compatible = "arm,pl061\\0arm,primecell";/compatible = "arm,pl061";/' \
    -e 's/compatible = "arm,pl031\\0arm,primecell";/compatible = "arm,pl031";/' "$W/virt.dts" > "$W/virt-platform.dts"
if cmp -s "$W/virt.dts" "$W/virt-platform.dts"; then echo "pl031/pl061 compatibles not found" >&2; exit 1; fi
dtc -q -I dts -O dtb -o "$OUT/virt-platform.dtb" "$W/virt-platform.dts"
dtc -q -I dts -O dtb -o "$OUT/virt-amba.dtb" "$W/virt.dts"
rm -rf "$W"
say "done"
