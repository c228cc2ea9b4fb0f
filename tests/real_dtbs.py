"""The real arm64 board device trees the suite tests against, from a pinned Debian package.

48 boards' ``.dtb`` files (``VENDOR__BOARD.dtb``), taken from Debian's
``linux-image-6.1.0-56-arm64`` 6.1.192-2 (bookworm-security; Linux 6.1.192), which carries
577 of them under ``/usr/lib/linux-image-6.1.0-56-arm64/VENDOR/``. The package is pinned by
its SHA-256 and every extracted file by its own; ``ensure()`` downloads it once, keeps only
the 48 files in ``$XDG_CACHE_HOME/platpass/dtbs/<package>_<version>/`` (about 2.3 MB; the
package itself, 60 MB, is not kept) and checks them on every run. Offline: point
``PLATPASS_DTB_DEB`` at a copy of the package. The device trees are the Linux kernel's
(``arch/arm64/boot/dts``; GPL-2.0 and/or MIT per source file); the suite downloads them and
does not redistribute them. To test against another board, add it to ``FILES`` with its
hash (``real_dtbs.sha256``) and update the counts the tests pin.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import shutil
import tarfile
import urllib.request
from pathlib import Path

PACKAGE = "linux-image-6.1.0-56-arm64"
VERSION = "6.1.192-2"
DEB_SHA256 = "6f4ed2d1cb9106bc977c2b1960008f175e2eed5740340634b7894e65ef5acc82"
DEB_SIZE = 59_812_568
#: Tried in order: the Debian security archive's pool, then snapshot.debian.org by the
#: package's SHA-1 (b22a28b7...), which keeps every package Debian ever published.
URLS = (
    "http://deb.debian.org/debian-security/pool/updates/main/l/linux-signed-arm64/"
    "linux-image-6.1.0-56-arm64_6.1.192-2_arm64.deb",
    "https://snapshot.debian.org/file/b22a28b7d5762beda99831493914875f40061cf3",
)
#: VENDOR/BOARD.dtb inside the package -> SHA-256 of the file (real_dtbs.sha256, in
#: ``sha256sum`` format).
FILES: dict[str, str] = {
    name: digest
    for digest, name in (line.split() for line in
                         (Path(__file__).with_suffix(".sha256")).read_text().splitlines() if line)
}
CACHE_ROOT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "platpass" \
    / "dtbs"
#: Where the files are (once ``ensure()`` has run): ``DTB_DIR / "rockchip__rk3568-evb1-v10.dtb"``.
DTB_DIR = CACHE_ROOT / f"{PACKAGE}_{VERSION}"


def local_name(member: str) -> str:
    return member.replace("/", "__")


#: Every board file's path, sorted by name.
PATHS: list[Path] = sorted(DTB_DIR / local_name(member) for member in FILES)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _intact(directory: Path) -> bool:
    try:
        return all(_sha256((directory / local_name(member)).read_bytes()) == digest
                   for member, digest in FILES.items())
    except OSError:
        return False


#: Where ``bench/scan.py`` keeps the same package once it has downloaded it (used only when
#: its SHA-256 is the pinned one).
BENCH_DEB = CACHE_ROOT.parent / "bench" / f"{PACKAGE}_{VERSION}_arm64.deb"


def _fetch(say) -> bytes:
    local = os.environ.get("PLATPASS_DTB_DEB")
    if not local and BENCH_DEB.is_file():
        local = str(BENCH_DEB)
    sources = [local] if local else list(URLS)
    errors = []
    for source in sources:
        say(f"real device trees: fetching {PACKAGE} {VERSION} ({DEB_SIZE / 1e6:.0f} MB) "
            f"from {source}")
        try:
            if local:
                data = Path(source).read_bytes()
            else:
                with urllib.request.urlopen(source, timeout=120) as reply:
                    data = reply.read()
        except OSError as err:
            errors.append(f"{source}: {err}")
            continue
        if _sha256(data) != DEB_SHA256:
            errors.append(f"{source}: SHA-256 {_sha256(data)}, pinned {DEB_SHA256}")
            continue
        return data
    raise RuntimeError("could not get the pinned kernel package:\n  " + "\n  ".join(errors)
                       + "\nset PLATPASS_DTB_DEB to a copy of "
                       f"{PACKAGE}_{VERSION}_arm64.deb (SHA-256 {DEB_SHA256})")


def _data_tar(deb: bytes) -> bytes:
    """The ``data.tar.*`` member of a ``.deb`` (an ``ar`` archive)."""
    if not deb.startswith(b"!<arch>\n"):
        raise RuntimeError("not a .deb (ar) archive")
    offset = 8
    while offset + 60 <= len(deb):
        header = deb[offset:offset + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        if name.startswith("data.tar"):
            return deb[offset + 60:offset + 60 + size]
        offset += 60 + size + (size & 1)
    raise RuntimeError("no data.tar in the .deb")


def _extract(deb: bytes, into: Path) -> None:
    prefix = f"./usr/lib/{PACKAGE}/"
    wanted = {prefix + member: member for member in FILES}
    with tarfile.open(fileobj=io.BytesIO(_data_tar(deb)), mode="r:*") as tar:
        for info in tar:
            member = wanted.pop(info.name, None)
            if member is None or not info.isfile():
                continue
            data = tar.extractfile(info).read()  # type: ignore[union-attr]
            if _sha256(data) != FILES[member]:
                raise RuntimeError(f"{member}: SHA-256 {_sha256(data)}, pinned {FILES[member]}")
            (into / local_name(member)).write_bytes(data)
    if wanted:
        raise RuntimeError(f"not in the package: {sorted(wanted.values())}")


def ensure(say=print) -> Path:
    """``DTB_DIR`` with every pinned board file checked, downloading them first if needed.

    Raises RuntimeError saying what failed and what to do.
    """
    if _intact(DTB_DIR):
        return DTB_DIR
    CACHE_ROOT.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(CACHE_ROOT / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent runs fetch once
        if _intact(DTB_DIR):
            return DTB_DIR
        staging = CACHE_ROOT / f".{DTB_DIR.name}.tmp{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        try:
            _extract(_fetch(say), staging)
            shutil.rmtree(DTB_DIR, ignore_errors=True)
            staging.rename(DTB_DIR)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    say(f"real device trees: {len(FILES)} boards in {DTB_DIR}")
    return DTB_DIR


#: Every DTB of the package (``ensure_all()``): ``ALL_DIR / "VENDOR/BOARD.dtb"``.
ALL_DIR = CACHE_ROOT / f"{PACKAGE}_{VERSION}_all"
ALL_COUNT = 577


def _extract_all(deb: bytes, into: Path) -> None:
    prefix = f"./usr/lib/{PACKAGE}/"
    with tarfile.open(fileobj=io.BytesIO(_data_tar(deb)), mode="r:*") as tar:
        for info in tar:
            if not (info.isfile() and info.name.startswith(prefix)
                    and info.name.endswith(".dtb")):
                continue
            member = info.name[len(prefix):]
            if ".." in member.split("/"):
                raise RuntimeError(f"{info.name}: unexpected member path")
            target = into / member
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            target.write_bytes(tar.extractfile(info).read())  # type: ignore[union-attr]


def all_paths() -> list[Path]:
    return sorted(ALL_DIR.rglob("*.dtb"))


def ensure_all(say=print) -> list[Path]:
    """All 577 DTBs of the pinned package (the package is checked by its SHA-256 before
    anything is extracted), in ``ALL_DIR``; about 30 MB. Raises RuntimeError as
    :func:`ensure` does."""
    if (ALL_DIR / ".complete").is_file():
        return all_paths()
    CACHE_ROOT.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(CACHE_ROOT / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (ALL_DIR / ".complete").is_file():
            staging = CACHE_ROOT / f".{ALL_DIR.name}.tmp{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(mode=0o700)
            try:
                _extract_all(_fetch(say), staging)
                found = len(list(staging.rglob("*.dtb")))
                if found != ALL_COUNT:
                    raise RuntimeError(f"{found} DTBs in the package, expected {ALL_COUNT}")
                (staging / ".complete").write_text(f"{found}\n")
                shutil.rmtree(ALL_DIR, ignore_errors=True)
                staging.rename(ALL_DIR)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return all_paths()


if __name__ == "__main__":
    ensure()
