"""``serve --workers N``: placement, the supervisor's sockets, restart after kill -9 with
the device's state kept, bounded restarts of a worker that dies at once, status for all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from platpass.assembly import DevicePlan, Listen, TreeSource, choose_exports, load_tree
from platpass.ops import workers as workers_module
from platpass.ops.control import query
from platpass.ops.workers import Supervisor, parse_workers, placement
from platpass.vfio_user.client import VfioUserClient

RTC = "/soc@9000000/rtc@20000"
WDT = "/soc@9000000/watchdog@40000"
PL031_MR = 0x04  # match register: read/write, 0 at power-on



def _start(*argv: str) -> tuple[subprocess.Popen[str], list[str]]:
    """``python -m platpass ARGV`` and the lines it printed up to "ready"."""
    proc = subprocess.Popen([sys.executable, "-m", "platpass", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stdout:  # type: ignore[union-attr]
        lines.append(line)
        if line.startswith("ready"):
            break
    return proc, lines


def _stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """SIGTERM the supervisor as a service manager would; its exit code and stderr."""
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(20)
    err = proc.stderr.read()  # type: ignore[union-attr]
    proc.stdout.close()  # type: ignore[union-attr]
    proc.stderr.close()  # type: ignore[union-attr]
    return code, err

def test_parse_workers_and_placement() -> None:
    assert parse_workers("3") == 3
    assert 1 <= parse_workers("auto") == min(64, len(os.sched_getaffinity(0)))
    for bad in ("0", "65", "two", "-1"):
        with pytest.raises(ValueError, match="workers"):
            parse_workers(bad)
    assert placement(2, 5) == [0, 1, 0, 1, 0]
    assert placement(4, 2) == [0, 1]  # never more workers than devices


def _wait(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _by_name(ctl: Path) -> dict[str, dict]:
    return {d["name"]: d for d in query(ctl)["devices"]}


def test_kill_9_worker_restarts_and_the_device_keeps_its_state(tmp_path: Path) -> None:
    socks, ctl = tmp_path / "socks", tmp_path / "ctl"
    proc, lines = _start("serve", "--sim", RTC, WDT, "--socket-dir", str(socks), "--control",
                         str(ctl), "--workers", "2")
    try:
        assert any(RTC in line and "(worker 0)" in line for line in lines), lines
        assert any(WDT in line and "(worker 1)" in line for line in lines), lines
        _wait(lambda: all(d["state"] == "serving" for d in _by_name(ctl).values()))
        status = _by_name(ctl)
        rtc_pid, wdt_pid = status[RTC]["worker_pid"], status[WDT]["worker_pid"]
        assert rtc_pid != wdt_pid and proc.pid not in (rtc_pid, wdt_pid)
        rtc_sock, wdt_sock = Path(status[RTC]["socket"]), Path(status[WDT]["socket"])

        with VfioUserClient.connect(rtc_sock) as client:
            client.write(0, PL031_MR, 4, 0x1234)
        with VfioUserClient.connect(rtc_sock) as client:  # a disconnect keeps registers
            assert client.read(0, PL031_MR, 4) == 0x1234

        other = VfioUserClient.connect(wdt_sock)
        rtc = VfioUserClient.connect(rtc_sock)
        before = other.read(0, 0xFE0, 4)
        time.sleep(workers_module.SAVE_DELAY * 5)  # the change is saved within SAVE_DELAY
        os.kill(rtc_pid, signal.SIGKILL)
        with pytest.raises(Exception):  # noqa: B017 - the client sees the disconnect
            for _ in range(100):
                rtc.read(0, PL031_MR, 4)
                time.sleep(0.02)
        rtc.close()
        assert rtc_sock.exists()  # the supervisor holds the socket: never missing
        _wait(lambda: _by_name(ctl)[RTC]["worker_pid"] not in (None, rtc_pid)
              and _by_name(ctl)[RTC]["state"] == "serving")
        status = _by_name(ctl)
        assert status[RTC]["worker_restarts"] == 1
        assert status[RTC]["worker_last_exit"] == -signal.SIGKILL
        assert status[WDT]["worker_pid"] == wdt_pid and status[WDT]["worker_restarts"] == 0
        with VfioUserClient.connect(rtc_sock) as client:
            # The model lived in the dead worker; its saved state came back with the new
            # one, as a disconnect leaves it.
            assert client.read(0, PL031_MR, 4) == 0x1234
        assert other.read(0, 0xFE0, 4) == before  # the other worker's client never noticed
        assert _by_name(ctl)[WDT]["client"] is not None
        other.close()
    finally:
        code, err = _stop(proc)
    assert code == 0, err
    assert err.count("was killed by signal 9") == 1, err  # logged once, with its status
    assert not ctl.exists() and list(socks.iterdir()) == []


def test_writes_through_a_mapping_outlive_the_worker(tmp_path: Path) -> None:
    """The register mirror a client maps is the supervisor's memfd: a guest's store into
    the mapped PL031 page that no event boundary took over yet is taken over by the next
    worker, not lost with the dead one."""
    socks, ctl = tmp_path / "socks", tmp_path / "ctl"
    proc, _ = _start("serve", "--sim", RTC, "--socket-dir", str(socks), "--control", str(ctl),
                     "--workers", "2")
    try:
        _wait(lambda: _by_name(ctl)[RTC]["state"] == "serving")
        status = _by_name(ctl)[RTC]
        client = VfioUserClient.connect(status["socket"])
        mapped = client.map_region(0)
        mapped.write(PL031_MR, 4, 0x5678)    # a store into the page: no message at all
        os.kill(status["worker_pid"], signal.SIGKILL)
        mapped.close()
        client.close()
        _wait(lambda: _by_name(ctl)[RTC]["worker_pid"] not in (None, status["worker_pid"])
              and _by_name(ctl)[RTC]["state"] == "serving")
        with VfioUserClient.connect(status["socket"]) as again:
            assert again.read(0, PL031_MR, 4) == 0x5678   # taken over at this boundary
    finally:
        code, err = _stop(proc)
    assert code == 0, err


def _plans(tmp_path: Path) -> list[DevicePlan]:
    tree = load_tree(TreeSource("sim"))
    exports, _ = choose_exports(tree, [RTC, WDT], everything_assignable=False)
    return [DevicePlan(e, "sim", Listen(tmp_path / f"{i}.sock"))
            for i, e in enumerate(exports)]


def test_a_worker_dying_at_once_is_given_up_and_the_others_serve(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers_module, "BACKOFF_FIRST", 0.01)
    real_main = Supervisor._worker_main

    def dies_at_once(self: Supervisor, worker, parent: int) -> int:
        if worker.index == 0:
            return 7
        return real_main(self, worker, parent)

    monkeypatch.setattr(Supervisor, "_worker_main", dies_at_once)
    with Supervisor(_plans(tmp_path), 2, control=tmp_path / "ctl") as sup:
        sup.start()
        bad, good = sup.workers
        deadline = time.monotonic() + 10
        while not bad.failed:
            assert time.monotonic() < deadline
            sup.reactor.run_once(0.05)
        assert bad.restarts == workers_module.MAX_QUICK_DEATHS and bad.last_exit == 7
        for _ in range(20):  # no further restart is scheduled
            sup.reactor.run_once(0.02)
        assert bad.pid is None and bad.timer is None
        devices = {d["name"]: d for d in sup.devices()}
        assert devices[RTC]["state"] == "failed" and devices[RTC]["worker_pid"] is None
        assert (tmp_path / "0.sock").exists()  # still bound: a connect waits, never ENOENT
        assert good.pid is not None
        _wait(lambda: sup.devices()[1]["state"] == "serving")
        with VfioUserClient.connect(tmp_path / "1.sock") as client:
            client.read(0, 0xFE0, 4)
    assert not (tmp_path / "0.sock").exists() and not (tmp_path / "1.sock").exists()


def _toml(tmp_path: Path, service_extra: str) -> Path:
    path = tmp_path / "lab.toml"
    path.write_text(f"""
[service]
run_dir = "{tmp_path}/run"
{service_extra}

[[device]]
node = "{RTC}"
source = "sim"
socket = "{tmp_path}/rtc.sock"
guest_address = 0x9020000

[[device]]
node = "{WDT}"
source = "sim"
socket = "{tmp_path}/wdt.sock"
""")
    return path


@pytest.mark.parametrize("value, message", [
    ("0", "0 workers: give 1-64 or auto"), ('"many"', "'many' is not a number of workers"),
    ("true", "True is not a number of workers"), ("65", "65 workers"),
])
def test_up_workers_key_is_validated(tmp_path: Path, value: str, message: str) -> None:
    from platpass.errors import ConfigError
    from platpass.ops.config import load_config

    with pytest.raises(ConfigError, match=f"service.workers.*{message}"):
        load_config(_toml(tmp_path, f"workers = {value}"))
    assert load_config(_toml(tmp_path, 'workers = "auto"')).workers >= 1
    assert load_config(_toml(tmp_path, "")).workers == 1


@pytest.mark.parametrize("user", [None, "65534:65534"])
def test_up_serves_from_workers(tmp_path: Path, user: str | None) -> None:
    if user is not None and os.geteuid() != 0:
        pytest.skip("dropping to another user needs root")
    if user is not None:
        tmp_path.chmod(0o755)  # the user's sockets live here; up checks who may write it
    config = _toml(tmp_path, "workers = 2" + (f'\nuser = "{user}"' if user else ""))
    ctl = tmp_path / "run" / "lab.ctl"
    proc, _ = _start("up", "--foreground", str(config))
    try:
        _wait(lambda: all(d["state"] == "serving" for d in _by_name(ctl).values()))
        status = _by_name(ctl)
        assert status[RTC]["worker"] == 0 and status[WDT]["worker"] == 1
        assert status[RTC]["worker_pid"] != status[WDT]["worker_pid"]
        assert status[RTC]["guest_address"] == 0x9020000  # up's own facts are kept
        assert status[RTC]["socket"] == str(tmp_path / "rtc.sock")
        if user is not None:
            assert _uids(status[RTC]["worker_pid"])[0] == 65534
        with VfioUserClient.connect(tmp_path / "rtc.sock") as a, \
                VfioUserClient.connect(tmp_path / "wdt.sock") as b:
            a.read(0, PL031_MR, 4)
            b.read(0, 0xFE0, 4)
            assert all(d["client"] is not None for d in _by_name(ctl).values())
    finally:
        code, err = _stop(proc)
    assert code == 0, err
    assert not ctl.exists() and not (tmp_path / "rtc.sock").exists()


def test_a_socket_that_cannot_be_bound_leaves_nothing_bound(tmp_path: Path) -> None:
    from platpass.errors import HostError

    good, bad = _plans(tmp_path)
    bad = DevicePlan(bad.export, "sim", Listen(tmp_path / "missing" / "x.sock"))
    with pytest.raises(HostError):
        Supervisor([good, bad], 2)
    assert list(tmp_path.iterdir()) == []  # the first socket was unbound and removed


def _uids(pid: int) -> tuple[int, ...]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return tuple(int(x) for x in line.split()[1:])
    raise AssertionError(f"no Uid line for {pid}")


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another user needs root")
def test_workers_drop_to_the_user_and_keep_state_in_a_directory_it_owns(
        tmp_path: Path) -> None:
    socks, ctl = tmp_path / "socks", tmp_path / "ctl"
    proc, lines = _start("serve", "--sim", RTC, WDT, "--socket-dir", str(socks), "--control",
                         str(ctl), "--workers", "2", "--user", "65534:65534")
    try:
        assert any("workers run as uid 65534 gid 65534" in line for line in lines), lines
        _wait(lambda: all(d["state"] == "serving" for d in _by_name(ctl).values()))
        status = _by_name(ctl)
        assert _uids(proc.pid)[0] == 0                       # the supervisor stays root
        for device in (RTC, WDT):
            _wait(lambda d=device: _uids(_by_name(ctl)[d]["worker_pid"]) == (65534,) * 4)
        assert socks.stat().st_uid == 65534                   # made for the user
        sock = status[RTC]["socket"]
        with VfioUserClient.connect(sock) as client:
            client.write(0, PL031_MR, 4, 0x4321)
        time.sleep(workers_module.SAVE_DELAY * 5)
        os.kill(status[RTC]["worker_pid"], signal.SIGKILL)
        _wait(lambda: _by_name(ctl)[RTC]["worker_pid"] not in (None, status[RTC]["worker_pid"])
              and _by_name(ctl)[RTC]["state"] == "serving")
        with VfioUserClient.connect(sock) as client:          # saved as the user, read back
            assert client.read(0, PL031_MR, 4) == 0x4321
    finally:
        code, err = _stop(proc)
    assert code == 0, err
    assert "cannot save" not in err and "Traceback" not in err, err


def test_uart_output_from_several_workers(tmp_path: Path) -> None:
    socks, out = tmp_path / "socks", tmp_path / "uart.out"
    uarts = ["/soc@9000000/serial@0", "/soc@9000000/serial@10000"]
    proc, _ = _start("serve", "--sim", *uarts, "--socket-dir", str(socks), "--workers", "2",
                     "--uart-output", str(out))
    try:
        for name, text in zip(uarts, (b"abc", b"xyz"), strict=True):
            with VfioUserClient.connect(socks / f"{name.rsplit('/', 1)[1]}.sock") as client:
                client.write(0, 0x30, 4, 0x301)   # UARTCR: UARTEN, TXE, RXE
                for byte in text:
                    # as a driver does: no FIFO (LCR_H.FEN clear), so wait for the
                    # holding register (UARTFR.TXFF clear) before each byte
                    while client.read(0, 0x18, 4) & 0x20:
                        time.sleep(0.001)
                    client.write(0, 0x00, 4, byte)
        _wait(lambda: out.exists() and len(out.read_bytes()) == 6)
        got = out.read_bytes()   # two workers appending: each UART's bytes in order
        assert bytes(b for b in got if b in b"abc") == b"abc"
        assert bytes(b for b in got if b in b"xyz") == b"xyz" and len(got) == 6
    finally:
        code, err = _stop(proc)
    assert code == 0, err


def test_uart_output_with_workers_is_for_uarts_only(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "platpass", "serve", "--sim", RTC, WDT,
                           "--socket-dir", str(tmp_path / "s"), "--workers", "2",
                           "--uart-output", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--uart-output needs simulated UARTs only" in done.stderr
    assert not (tmp_path / "out").exists()
