"""Root never acts on a path another user can swap (issue 16, item 1).

The attack these reproduce: a user who may write the socket directory (``serve --user U
--socket-dir D`` leaves ``D`` owned by ``U``) replaces names there with symlinks while a
root server sets the socket up, so that root's ``chown``/``chmod``/``open`` land on a file
of the attacker's choosing. Each test plays the attacker at the worst moment and checks the
victim file is untouched.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from platpass.errors import HostError, OpsError
from platpass.host.safepath import bind_unix_socket, open_append, write_file_replacing
from platpass.ops.trace import TraceWriter

NOBODY = 65534


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A socket directory owned by ``nobody`` (the documented --user set-up)."""
    path = Path(tempfile.mkdtemp(prefix="platpass-shared-"))
    path.chmod(0o755)
    if os.geteuid() == 0:
        os.chown(path, NOBODY, NOBODY)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A root-owned file the attacker wants to own (a stand-in for /etc/shadow)."""
    path = tmp_path / "victim"
    path.write_text("secret\n")
    path.chmod(0o600)
    return path


def _state(path: Path) -> tuple[int, int, int, bytes]:
    st = os.stat(path)
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, path.read_bytes()


@pytest.mark.skipif(os.geteuid() != 0, reason="the escalation needs a root server")
def test_symlinks_planted_during_set_up_change_no_file(
        shared_dir: Path, victim: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Right after bind() the attacker turns the final name, and every private entry
    platpass made in the directory, into symlinks to the victim: root must not follow
    any of them, and the set-up fails cleanly instead."""
    before = _state(victim)
    lure = Path(tempfile.mkdtemp(prefix="platpass-lure-"))
    (lure / "s").symlink_to(victim)
    real_bind = socket.socket.bind
    target = shared_dir / "uart.sock"

    def attacker_bind(sock: socket.socket, address: object) -> None:
        real_bind(sock, address)  # type: ignore[arg-type]
        for entry in list(shared_dir.iterdir()):
            if entry.is_dir() and not entry.is_symlink():
                entry.rename(shared_dir / f"moved{entry.name}")
                entry.symlink_to(lure)
            elif entry.name == target.name:
                entry.unlink()
        if not target.is_symlink():
            target.symlink_to(victim)

    monkeypatch.setattr(socket.socket, "bind", attacker_bind)
    try:
        with pytest.raises(HostError, match="appeared while"):
            bind_unix_socket(target, mode=0o666, owner=NOBODY, group=NOBODY,
                             server_uid=NOBODY)
    finally:
        monkeypatch.undo()
        shutil.rmtree(lure, ignore_errors=True)
    assert _state(victim) == before
    assert target.is_symlink()  # left as the attacker made it: not ours to remove


@pytest.mark.skipif(os.geteuid() != 0, reason="ownership checks need root")
def test_a_directory_other_users_may_write_is_refused(tmp_path: Path) -> None:
    world = tmp_path / "world"
    world.mkdir(mode=0o777)
    world.chmod(0o1777)
    with pytest.raises(HostError, match=r"writable by other users \(mode 1777\)"):
        bind_unix_socket(world / "a.sock")
    group = tmp_path / "group"
    group.mkdir()
    group.chmod(0o775)
    os.chown(group, 0, NOBODY)
    with pytest.raises(HostError, match="writable by other users"):
        bind_unix_socket(group / "a.sock")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    os.chown(foreign, 1234, 1234)
    with pytest.raises(HostError, match="belongs to uid 1234"):
        bind_unix_socket(foreign / "a.sock")
    # The socket's future owner and the server's own user may own it.
    sock, handle = bind_unix_socket(foreign / "a.sock", owner=1234)
    sock.close()
    handle.unlink()
    handle.close()
    assert list(world.iterdir()) == [] and list(group.iterdir()) == []


def test_a_socket_we_did_not_create_is_never_unlinked(tmp_path: Path) -> None:
    path = tmp_path / "dev.sock"
    sock, handle = bind_unix_socket(path)
    sock.close()
    path.unlink()  # someone else's server now owns the name
    other, other_handle = bind_unix_socket(path)
    handle.unlink()
    handle.close()
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    probe = socket.socket(socket.AF_UNIX)
    probe.connect(str(path))  # still the live server's socket
    probe.close()
    other.close()
    other_handle.unlink()
    other_handle.close()
    assert not path.exists()


def test_two_servers_racing_for_one_path_never_both_bind(tmp_path: Path) -> None:
    """Many rounds of two binders started together: exactly one wins each round, the
    loser gets a clear error, and the name always reaches the winner's socket."""
    for round_ in range(60):
        path = tmp_path / f"r{round_}.sock"
        results: list[object] = []
        start = threading.Barrier(2)

        def contender(results: list[object] = results, path: Path = path,
                      start: threading.Barrier = start) -> None:
            start.wait()
            try:
                results.append(bind_unix_socket(path))
            except HostError as err:
                results.append(err)

        threads = [threading.Thread(target=contender) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [r for r in results if isinstance(r, tuple)]
        losers = [r for r in results if isinstance(r, HostError)]
        assert len(winners) == 1 and len(losers) == 1, results
        assert "in use by a running server" in str(losers[0])
        sock, handle = winners[0]
        probe = socket.socket(socket.AF_UNIX)
        probe.connect(str(path))
        conn, _ = sock.accept()
        conn.close()
        probe.close()
        sock.close()
        handle.unlink()
        handle.close()


def test_files_root_writes_never_follow_symlinks_or_open_fifos(
        tmp_path: Path, victim: Path) -> None:
    before = _state(victim)
    link = tmp_path / "trace.jsonl"
    link.symlink_to(victim)
    with pytest.raises(OpsError, match="cannot open trace file"):
        TraceWriter(link)
    with pytest.raises(HostError):
        open_append(link)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(HostError, match="fifo"):
        open_append(fifo)  # and it did not block waiting for a reader
    os.mkfifo(tmp_path / "read-fifo")
    reader = os.open(tmp_path / "read-fifo", os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(HostError, match="not a regular file"):
            open_append(tmp_path / "read-fifo")
    finally:
        os.close(reader)
    pid = tmp_path / "up.pid"
    pid.symlink_to(victim)
    write_file_replacing(pid, b"123\n")  # replaces the link itself
    assert pid.read_bytes() == b"123\n" and not pid.is_symlink()
    assert _state(victim) == before


def test_guest_program_cache_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    """Assembled guest programs are cached in the user's own cache, never under a fixed
    name in /tmp; a cache directory others may write is refused, not used."""
    from platpass.vmm import guest_programs

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    guest_programs.build_program("hello")
    cache = tmp_path / "platpass" / "guests"
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700
    assert any(cache.glob("hello-*.bin"))
    cache.chmod(0o777)
    with pytest.raises(HostError, match="writable by other users"):
        guest_programs.build_program("hello")
