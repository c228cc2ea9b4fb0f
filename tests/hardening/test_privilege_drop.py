"""Dropping root after the device and sockets are open (platpass.host.privilege).

Every drop happens in a forked child (a drop is for good); the child reports what the
kernel says about it through a pipe. The end-to-end test runs the real ``platpass serve
--user nobody`` and drives its simulated device from this (root) process afterwards.
"""

from __future__ import annotations

import errno
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from platpass.host.privilege import (
    CAPABILITIES,
    Credentials,
    PrivilegeError,
    drop_privileges,
    parse_run_as,
    resolve_run_as,
    run_separated,
)
from platpass.vfio_user.client import VfioUserClient

NOBODY = 65534
NOGROUP = 65534

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")


def in_child(body: Callable[[], dict]) -> dict:
    """Run ``body`` in a forked child and return the dict it produced (or its error)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(r)
        try:
            result = body()
        except BaseException as err:
            result = {"error": type(err).__name__, "message": str(err)}
        os.write(w, json.dumps(result).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while select.select([r], [], [], 60)[0] and (chunk := os.read(r, 65536)):
        data += chunk
    os.close(r)
    if not data:  # hung (a grandchild holding the pipe): do not hang the suite too
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return json.loads(data)


def creds_dict() -> dict:
    c = Credentials.of()
    return {"uids": list(c.uids), "gids": list(c.gids), "groups": list(c.groups),
            "eff": c.cap_effective, "prm": c.cap_permitted, "bnd": c.cap_bounding,
            "inh": c.cap_inheritable, "amb": c.cap_ambient, "nnp": c.no_new_privs}


# ---------------------------------------------------------------- resolving the target

@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory nobody can traverse (pytest's tmp_path is 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix="platpass-priv-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)



def test_names_and_numbers_resolve_to_the_same_ids() -> None:
    by_name = resolve_run_as("nobody")
    assert (by_name.uid, by_name.gid) == (NOBODY, NOGROUP)
    assert by_name.groups == (NOGROUP,)
    for spec in ("65534", "nobody:nogroup", "65534:65534", "nobody:65534"):
        run_as = parse_run_as(spec)
        assert (run_as.uid, run_as.gid) == (NOBODY, NOGROUP), spec


@pytest.mark.parametrize(("spec", "words"), [
    ("root", "uid/gid 0"),
    ("0:65534", "uid/gid 0"),
    ("nobody:0", "uid/gid 0"),
    ("nobody:root", "uid/gid 0"),
    ("no-such-user-platpass", "unknown user"),
    ("nobody:no-such-group-platpass", "unknown group"),
    ("nobody:", "USER:GROUP"),
    (":nogroup", "USER:GROUP"),
])
def test_bad_or_root_targets_are_refused(spec: str, words: str) -> None:
    with pytest.raises(PrivilegeError, match=words):
        parse_run_as(spec)


def test_a_bare_uid_without_passwd_entry_needs_its_group() -> None:
    uid = next(u for u in range(61000, 62000) if not _has_passwd(u))
    with pytest.raises(PrivilegeError, match="no passwd entry"):
        parse_run_as(str(uid))
    run_as = parse_run_as(f"{uid}:{NOGROUP}")
    assert (run_as.uid, run_as.gid, run_as.groups) == (uid, NOGROUP, (NOGROUP,))


def _has_passwd(uid: int) -> bool:
    import pwd

    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


# ---------------------------------------------------------------- the drop itself

def test_drop_leaves_no_way_back_to_root(tmp_path: Path) -> None:
    secret = tmp_path / "root-only"
    secret.write_text("x")
    secret.chmod(0o600)

    def body() -> dict:
        held_r, held_w = os.pipe()  # opened as root, used after the drop
        efd = os.eventfd(0)
        drop_privileges("nobody")
        out = creds_dict()
        out["resuid"] = list(os.getresuid())
        out["resgid"] = list(os.getresgid())
        for name, call in (("setuid0", lambda: os.setuid(0)),
                           ("setresuid0", lambda: os.setresuid(0, 0, 0)),
                           ("setgid0", lambda: os.setgid(0)),
                           ("setgroups0", lambda: os.setgroups([0])),
                           ("open_secret", lambda: open(secret).close())):
            try:
                call()
                out[name] = "succeeded"
            except OSError as err:
                out[name] = err.errno
        os.write(held_w, b"ok")
        os.eventfd_write(efd, 3)
        out["held"] = [os.read(held_r, 2).decode(), os.eventfd_read(efd)]
        return out

    out = in_child(body)
    assert out["resuid"] == [NOBODY] * 3 and out["uids"] == [NOBODY] * 4
    assert out["resgid"] == [NOGROUP] * 3 and out["gids"] == [NOGROUP] * 4
    assert out["groups"] == [NOGROUP]
    for name in ("setuid0", "setresuid0", "setgid0", "setgroups0"):
        assert out[name] == errno.EPERM, name
    assert out["open_secret"] == errno.EACCES
    assert (out["eff"], out["prm"], out["inh"], out["amb"], out["bnd"]) == (0, 0, 0, 0, 0)
    assert out["nnp"] is True
    assert out["held"] == ["ok", 3]  # fds opened as root keep working


def test_kept_capability_is_the_only_one(open_dir: Path) -> None:
    target = open_dir / "f"
    target.write_text("x")

    def body() -> dict:
        drop_privileges(NOBODY, NOGROUP, keep_caps=["net_bind_service"])
        out = creds_dict()
        sock = socket.socket()
        try:
            sock.bind(("127.0.0.1", 0))  # any port proves nothing; a low one needs the cap
            sock.close()
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            for port in range(600, 1000):
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError as err:
                    if err.errno == errno.EADDRINUSE:
                        continue
                    raise
                out["low_port"] = port
                break
        except OSError as err:
            out["low_port"] = err.errno
        finally:
            sock.close()
        try:
            os.chown(target, NOBODY, NOGROUP)  # would need CAP_CHOWN
            out["chown"] = "succeeded"
        except OSError as err:
            out["chown"] = err.errno
        return out

    out = in_child(body)
    bit = 1 << CAPABILITIES["CAP_NET_BIND_SERVICE"]
    assert (out["eff"], out["prm"], out["bnd"]) == (bit, bit, bit)
    assert (out["inh"], out["amb"]) == (0, 0)
    assert isinstance(out["low_port"], int) and 600 <= out["low_port"] < 1000
    assert out["chown"] == errno.EPERM


def test_a_threaded_process_is_refused_and_left_as_it_was() -> None:
    def body() -> dict:
        stop = threading.Event()
        thread = threading.Thread(target=stop.wait)
        thread.start()
        try:
            drop_privileges("nobody")
            return {"dropped": True}
        except PrivilegeError as err:
            return {"message": str(err), **creds_dict()}
        finally:
            stop.set()
            thread.join()

    out = in_child(body)
    assert "threads" in out["message"]
    assert out["uids"] == [0] * 4 and out["nnp"] is False and out["eff"] != 0


def test_an_unprivileged_process_cannot_switch_users() -> None:
    def body() -> dict:
        os.setgroups([NOGROUP])
        os.setresgid(NOGROUP, NOGROUP, NOGROUP)
        os.setresuid(NOBODY, NOBODY, NOBODY)
        out: dict = {}
        try:
            drop_privileges("daemon")
        except PrivilegeError as err:
            out["other"] = str(err)
        drop_privileges(NOBODY, NOGROUP)  # already that user: only no_new_privs is added
        out.update(creds_dict())
        return out

    out = in_child(body)
    assert "not running as root" in out["other"]
    assert out["uids"] == [NOBODY] * 4 and out["nnp"] is True


# ---------------------------------------------------------------- privilege separation

def test_separated_server_is_unprivileged_and_cleanup_runs_as_root() -> None:
    """The root parent forwards SIGTERM to the serving child, then cleans up as root."""
    def body() -> dict:
        report_r, report_w = os.pipe()
        wake_r, wake_w = os.pipe()  # held by the server across the drop

        def serve() -> int:
            signal.signal(signal.SIGTERM, lambda *_: os.write(wake_w, b"x"))
            os.write(report_w, json.dumps({"server": creds_dict()}).encode() + b"\n")
            os.read(wake_r, 1)  # until SIGTERM
            return 3

        cleanups: list[tuple[int, int]] = []
        pid = os.getpid()
        killer = os.fork()
        if killer == 0:  # sends SIGTERM to the parent once the server reported
            select.select([report_r], [], [], 10)
            os.kill(pid, signal.SIGTERM)
            os._exit(0)
        code = run_separated(parse_run_as("nobody"), serve,
                             lambda c: cleanups.append((c, os.geteuid())))
        os.waitpid(killer, 0)
        server = json.loads(os.read(report_r, 65536).decode().splitlines()[0])["server"]
        return {"code": code, "cleanups": cleanups, "server": server, "me": creds_dict()}

    out = in_child(body)
    assert out["server"]["uids"] == [NOBODY] * 4 and out["server"]["eff"] == 0
    assert out["code"] == 3
    assert out["cleanups"] == [[3, 0]]  # cleanup once, as root, with the server's code
    assert out["me"]["uids"] == [0] * 4


def test_separated_cleanup_runs_even_when_the_server_is_killed() -> None:
    def body() -> dict:
        cleanups: list[int] = []

        def serve() -> int:
            os.kill(os.getpid(), signal.SIGKILL)
            return 0

        code = run_separated(parse_run_as("nobody"), serve, cleanups.append)
        return {"code": code, "cleanups": cleanups}

    assert in_child(body) == {"code": -signal.SIGKILL, "cleanups": [-signal.SIGKILL]}


# ---------------------------------------------------------------- platpass serve --user

def start_serve(*args: str) -> subprocess.Popen[bytes]:
    """Start ``platpass serve`` and return once it printed ``ready`` (its output before
    that is kept as ``proc.banner``)."""
    # stderr to a file: an unread pipe would block a server that logs much.
    errors = tempfile.TemporaryFile("w+")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen([sys.executable, "-m", "platpass", "serve", *args],
                            stdout=subprocess.PIPE, stderr=errors)
    assert proc.stdout is not None
    # Raw reads: select() on a buffered reader misses lines already in its buffer.
    fd = proc.stdout.fileno()
    output = b""
    while b"\nready\n" not in b"\n" + output:
        if not select.select([fd], [], [], 60)[0]:
            proc.kill()
            raise AssertionError(f"serve not ready in 60 s: {output!r}")
        chunk = os.read(fd, 65536)
        if not chunk:
            proc.wait(5)
            errors.seek(0)
            raise AssertionError(f"serve exited: {output!r} {errors.read()}")
        output += chunk
    proc.banner = output.decode()  # type: ignore[attr-defined]
    return proc


def test_serve_drops_to_nobody_and_still_serves_end_to_end(open_dir: Path) -> None:
    socks = open_dir / "socks"
    proc = start_serve("--sim", "--socket-dir", str(socks), "--user", "nobody",
                       "--mode", "0600")
    try:
        banner = proc.banner  # type: ignore[attr-defined]
        assert "running as uid 65534 gid 65534" in banner
        creds = Credentials.of(proc.pid)
        assert creds.uids == (NOBODY,) * 4 and creds.gids == (NOGROUP,) * 4
        assert creds.groups == (NOGROUP,)
        assert (creds.cap_effective, creds.cap_permitted, creds.cap_bounding) == (0, 0, 0)
        assert creds.no_new_privs
        # The sockets were made as root, with the mode asked for, before the drop.
        rtc = socks / "rtc@20000.sock"
        st = rtc.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, 0, 0o600)
        assert socks.stat().st_uid == NOBODY  # created by serve for the user it becomes
        with VfioUserClient.connect(rtc) as client:
            assert client.read(0, 0xFE0, 4) == 0x31  # PL031 PeriphID0
            client.write(0, 0x08, 4, 1_000_000)  # RTCLR: load the counter
            assert 1_000_000 <= client.read(0, 0x00, 4) <= 1_000_005
            efd = os.eventfd(0, os.EFD_NONBLOCK)
            try:
                client.set_trigger_eventfd(0, efd)  # the eventfd travels to nobody
                client.trigger(0)
                select.select([efd], [], [], 5)
                assert os.eventfd_read(efd) == 1
            finally:
                os.close(efd)
        with VfioUserClient.connect(socks / "serial@0.sock") as client:
            assert client.read(0, 0xFE0, 4) == 0x11  # PL011 PeriphID0
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(10)
    assert code == 0
    assert list(socks.iterdir()) == []  # the unprivileged server removed its sockets


def test_serve_with_an_unknown_user_opens_nothing(open_dir: Path) -> None:
    socks = open_dir / "socks"
    result = subprocess.run([sys.executable, "-m", "platpass", "serve", "--sim",
                             "--socket-dir", str(socks), "--user", "no-such-user-platpass"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "unknown user 'no-such-user-platpass'" in result.stderr
    assert not socks.exists()
