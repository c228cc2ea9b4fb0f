"""``platpass demo`` end to end, on /dev/kvm and through the client-library fallback."""

from __future__ import annotations

import pytest

from platpass.cli import main
from platpass.cli.demo import MESSAGE
from platpass.vmm.kvm import kvm_unavailable_reason

KVM_REASON = kvm_unavailable_reason()


@pytest.mark.kvm
@pytest.mark.skipif(KVM_REASON is not None, reason=KVM_REASON or "")
def test_demo_boots_a_guest_that_drives_the_devices(capsys: pytest.CaptureFixture[str],
                                                    tmp_path) -> None:
    assert main(["demo", "--no-qemu", "--keep", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "REFUSED_BUS_MASTER" in out and "ethernet@200000" in out
    assert f"{MESSAGE.rstrip()!r} (matches what the guest sent)" in out
    assert "taken 1x by the guest ISR" in out
    assert "through the KVM resample fd" in out
    assert "KVM exits:" in out
    # the PL031 is mapped: its counter reads and alarm set-up/ack cost no exit
    assert "mapped: the PL031 page, 4096 bytes, is a KVM memory slot" in out
    assert "the guest read RTCDR 10000x and set up and acked its alarm with 0 MMIO exits " \
        "(0 accesses forwarded)" in out
    # the PL011 is trapped: one exit per access
    trapped = next(line for line in out.splitlines() if "trapped: the PL011 page" in line)
    exits, accesses = (int(w) for w in trapped.split(": ", 1)[1].split() if w.isdigit())
    assert exits == accesses > 0
    assert (tmp_path / "guest-overlay.dtbo").read_bytes()[:4] == b"\xd0\x0d\xfe\xed"
    assert '"platpass_guest_placement": 1' in (tmp_path / "placement.json").read_text()


def test_demo_without_kvm_runs_the_driver_sequence_over_the_client(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--no-kvm", "--no-qemu"]) == 0
    out = capsys.readouterr().out
    assert "client library" in out
    assert f"{MESSAGE.rstrip()!r} (matches what the guest sent)" in out
    assert "taken 1x by the client" in out
    line = next(line for line in out.splitlines() if "RTC: RTCDR = " in line)
    by_message, mapped = (int(w) for w in line.split() if w.isdigit())
    assert abs(mapped - by_message) <= 1 and "through the mapped page" in line


def test_missing_kvm_device_is_explained() -> None:
    reason = kvm_unavailable_reason("/nonexistent/kvm")
    assert reason is not None and "/nonexistent/kvm does not exist" in reason


def test_demo_qemu_segment_says_how_to_get_qemu(monkeypatch, capsys) -> None:
    import platpass.vmm.qemu_pci as qemu_pci
    from platpass.cli.demo_qemu import HOW_TO_GET_QEMU, run_segment

    monkeypatch.setattr(qemu_pci, "find_guest_image", lambda arch="x86_64": None)
    assert run_segment(6, print) is None
    out = capsys.readouterr().out
    assert "[6] QEMU vfio-user-pci" in out and HOW_TO_GET_QEMU in out
