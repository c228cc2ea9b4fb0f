"""``--trace`` records and ``platpass replay``: a known access sequence is recorded exactly,
replays with zero divergences (time-dependent registers included, on a manual clock), and a
tampered trace reports the divergence."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from platpass.drivers.registry import default_registry
from platpass.errors import OpsError, VfioError
from platpass.host.simulated import ManualClock
from platpass.host.simulated.board import load_board, open_sim_backend
from platpass.ops.trace import DeviceTracer, TraceWriter, read_trace, replay
from platpass.reactor import EpollReactor
from platpass.vfio_device.device import VfioDevice
from platpass.vfio_device.uapi import IrqSetFlags as F
from platpass.vfio_user.client import VfioUserClient

SP805, GPIO = "/soc@9000000/watchdog@40000", "/soc@9000000/gpio@30000"


@pytest.fixture
def traced(tmp_path: Path) -> Iterator[Any]:
    """A traced simulated device on a manual clock, as serve --trace builds one."""
    made: list[tuple[VfioDevice, EpollReactor, TraceWriter]] = []

    def make(path: str) -> tuple[VfioDevice, ManualClock, Path]:
        node = load_board().node(path)
        reactor = EpollReactor()
        clock = ManualClock()
        writer = TraceWriter(tmp_path / "trace.jsonl", clock.now)
        backend = open_sim_backend(node, reactor, clock)
        driver = default_registry(plugins=False).match(node.compatible)(node)
        device = VfioDevice(node, driver, backend, reactor, force_trap_all=True)
        DeviceTracer(writer, device, path, opened_at=0.0)
        device.open()
        made.append((device, reactor, writer))
        return device, clock, writer.path

    yield make
    for device, reactor, writer in made:
        device.close()
        reactor.close()
        writer.close()


def _strip(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(r["event"], r.get("t"), r.get("offset"), r.get("value"), r.get("what"),
             r.get("errno")) for r in records if r["event"] != "open"]


def test_watchdog_sequence_is_recorded_exactly_and_replays_without_divergence(traced) -> None:
    device, clock, path = traced(SP805)
    trigger = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        device.set_irqs(0, F.DATA_EVENTFD | F.ACTION_TRIGGER, 0, 1, fds=[trigger])
        device.write(0, 0xC00, 4, 0x1ACCE551)     # unlock
        device.write(0, 0x000, 4, 1_000_000)      # WdogLoad: 1 s at 1 MHz
        device.write(0, 0x008, 4, 0x3)            # INTEN | RESEN
        clock.advance(0.25)
        assert device.read(0, 0x004, 4) == 750_000   # WdogValue counts down
        clock.advance(0.75)                       # reaches zero: interrupt
        assert os.eventfd_read(trigger) == 1
        assert device.read(0, 0x014, 4) == 1      # WdogMIS
        device.write(0, 0x00C, 4, 1)              # WdogIntClr
        device.irqs.unmask(0)
        with pytest.raises(VfioError):
            device.read(0, 0x002, 4)              # misaligned: refused, recorded
    finally:
        os.close(trigger)
    records = list(read_trace(path))
    assert records[0]["event"] == "open" and records[0]["compatible"] == ["arm,sp805"]
    assert _strip(records) == [
        ("reset", 0.0, None, None, None, None),
        ("write", 0.0, 0xC00, 0x1ACCE551, None, None),
        ("write", 0.0, 0x000, 1_000_000, None, None),
        ("write", 0.0, 0x008, 3, None, None),
        ("read", 0.25, 0x004, 750_000, None, None),
        ("irq", 1.0, None, None, "fired", None),
        ("irq", 1.0, None, None, "delivered", None),
        ("irq", 1.0, None, None, "masked", None),
        ("read", 1.0, 0x014, 1, None, None),
        ("write", 1.0, 0x00C, 1, None, None),
        ("irq", 1.0, None, None, "unmasked", None),
        ("read", 1.0, 0x002, None, None, 22),
    ]
    report = replay(path)
    assert report.accesses == {SP805: 7}
    assert report.divergences == ()


def test_a_tampered_trace_reports_the_divergence(traced, tmp_path: Path) -> None:
    device, _clock, path = traced(GPIO)
    device.write(0, 0x400, 1, 0x0F)                # GPIODIR
    assert device.read(0, 0x400, 1) == 0x0F
    assert device.read(0, 0xFE0, 4) == 0x61
    lines = path.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    target = next(i for i, r in enumerate(records) if r["event"] == "read")
    records[target]["value"] = 0x0E
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text("".join(json.dumps(r) + "\n" for r in records))
    (divergence,) = replay(tampered, GPIO).divergences
    assert str(divergence) == (f"line {target + 1}: {GPIO}: read region 0 offset 0x400 "
                               "size 1: recorded 0xe, replay 0xf")
    result = subprocess.run([sys.executable, "-m", "platpass", "replay", str(tampered)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{GPIO}: 3 accesses replayed",
        f"DIVERGENCE line {target + 1}: {GPIO}: read region 0 offset 0x400 size 1: "
        "recorded 0xe, replay 0xf",
        "1 divergences"]


def test_malformed_traces_are_refused_with_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"event": "open", "device": GPIO, "clock": 0}) + "\nnot json\n")
    with pytest.raises(OpsError, match=r"bad.jsonl:2: not JSON"):
        replay(path)
    path.write_text(json.dumps({"event": "open", "device": "/soc@9000000/nothing@0"}) + "\n")
    with pytest.raises(OpsError) as info:
        replay(path)
    assert str(info.value) == "replay: /soc@9000000/nothing@0 is not a device of the " \
        "simulated board"
    path.write_text(json.dumps({"event": "open", "device": GPIO, "clock": 0}) + "\n"
                    + json.dumps({"event": "read", "device": GPIO, "t": 0}) + "\n")
    with pytest.raises(OpsError, match=r"bad.jsonl:2: malformed read record"):
        replay(path)
    with pytest.raises(OpsError, match=r"has no record of /soc@9000000/serial@0"):
        replay(tmp_path / "bad.jsonl", "/soc@9000000/serial@0")


def test_serve_trace_end_to_end_replays_with_zero_divergences(tmp_path: Path) -> None:
    """A real ``serve --trace`` process, a client over the socket, then ``platpass replay``."""
    trace, sock = tmp_path / "gpio.trace", tmp_path / "gpio.sock"
    proc = subprocess.Popen([sys.executable, "-m", "platpass", "serve", "--sim", GPIO,
                             "--socket", str(sock), "--trace", str(trace)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == "ready":
                break
        with VfioUserClient.connect(sock) as client:
            # Traced devices map nothing: every access reaches the device and the trace.
            assert not client.region_info(0).mappable
            client.write(0, 0x400, 1, 0xF0)          # GPIODIR
            client.write(0, 0x3FC, 1, 0xA5)          # GPIODATA, all bits
            assert client.read(0, 0x3FC, 1) == 0xA0  # inputs read 0
            client.write(0, 0x410, 1, 0x01)          # GPIOIE
            assert client.read(0, 0x410, 1) == 0x01
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    events = [(r["event"], r.get("offset"), r.get("value")) for r in read_trace(trace)
              if r["event"] in ("read", "write") and r.get("offset", 0) < 0xFE0]
    assert events[-5:] == [("write", 0x400, 0xF0), ("write", 0x3FC, 0xA5),
                           ("read", 0x3FC, 0xA0), ("write", 0x410, 0x01),
                           ("read", 0x410, 0x01)]
    result = subprocess.run([sys.executable, "-m", "platpass", "replay", str(trace),
                             "--node", GPIO, "--json"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["divergences"] == [] and report["accesses"][GPIO] >= 5
