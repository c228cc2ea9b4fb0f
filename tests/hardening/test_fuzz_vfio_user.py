"""The bounded CI run of the vfio-user fuzzer (``platpass.vfio_user.fuzz``).

* in-process, codec + framing + session: 100 000 messages (or 2 minutes, whichever first);
* in-process, the socket server (fast path, SCM_RIGHTS): 15 000 messages;
* from outside, ``python3 -m platpass serve --sim`` in a subprocess: 12 seconds;
* hypothesis choosing the cases (its own seeds) on the direct target.

Every invariant is the fuzzer's (see its module docstring); a finding fails the test with
the case seed to replay (``python3 -m platpass.vfio_user.fuzz --replay SEED``). The
checker itself is tested on replies it must reject, so the runs cannot pass vacuously.
"""

from __future__ import annotations

import errno
import os
import random
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from platpass.vfio_user import fuzz
from platpass.vfio_user.protocol import messages as m
from platpass.vfio_user.protocol.header import HEADER_SIZE, Command, Header, HeaderFlags
from platpass.vfio_user.session import Limits, Reply

# Every server and client here runs once on the C fast path and once on the Python one.
pytestmark = pytest.mark.usefixtures("fast_path")

SEED = 20261125


def _show(report: fuzz.FuzzReport) -> str:
    return report.summary() + "".join(f"\n  {f}" for f in report.findings[:20])


def test_direct_fuzz_reaches_100k_messages_without_findings() -> None:
    target = fuzz.DirectTarget()
    try:
        report = fuzz.run(target, messages=100_000, seconds=120, seed=SEED)
    finally:
        target.close()
    print(report.summary())
    assert not report.findings, _show(report)
    assert report.messages >= 100_000 or report.seconds >= 120
    # The mutations reach the handlers, not only the header check: accepted commands,
    # refusals of several kinds, fds carried, deliberate closes all happen.
    assert report.replies - report.error_replies > report.messages // 10
    assert {"EINVAL", "E2BIG", "ENOSYS", "ENOTSUP", "ENOENT"} <= set(report.errnos)
    assert report.fds_sent > 10_000 and report.closes > 100


def test_socket_server_fuzz_without_findings() -> None:
    target = fuzz.ServerTarget()
    try:
        report = fuzz.run(target, messages=15_000, seconds=60, seed=SEED)
    finally:
        target.close()
    print(report.summary())
    assert not report.findings, _show(report)
    assert report.messages >= 15_000 or report.seconds >= 60
    assert report.replies > report.messages // 2


def test_external_fuzz_against_platpass_serve() -> None:
    report = fuzz.run_external(seconds=12, seed=SEED)
    print(report.summary())
    assert not report.findings, _show(report)
    assert report.messages > 1000 and report.cases > 300


@pytest.fixture(scope="module")
def direct() -> Iterator[fuzz.DirectTarget]:
    target = fuzz.DirectTarget()
    yield target
    target.close()


@settings(max_examples=150, deadline=None)
@given(case_seed=st.integers(0, 2**63))
def test_hypothesis_chosen_cases(direct: fuzz.DirectTarget, case_seed: int) -> None:
    report = fuzz.run(direct, replay=[case_seed])
    assert not report.findings, _show(report)


# ------------------------------------------------------------------ the checker itself


def _header(flags: int = 0) -> Header:
    return Header(7, Command.DEVICE_GET_INFO, HEADER_SIZE + 16, flags)


def _reply(header: Header, payload: bytes = b"", error: int = 0, flags: int = 1) -> Reply:
    return Reply(Header(header.msg_id, header.command, HEADER_SIZE + len(payload),
                        flags | (HeaderFlags.ERROR if error else 0), error), payload)


def test_checker_rejects_wrong_replies() -> None:
    request = _header()
    good = m.DeviceInfo(16, 5, 1, 1).encode()
    assert fuzz.check_reply(request, _reply(request, good)) is None
    assert fuzz.check_reply(request, _reply(request, error=errno.EINVAL)) is None
    assert "no reply" in (fuzz.check_reply(request, None) or "")
    other = Header(8, request.command, request.size, 0)
    assert "does not answer" in (fuzz.check_reply(request, _reply(other, good)) or "")
    assert "errno" in (fuzz.check_reply(
        request, _reply(request, b"x", error=errno.EINVAL)) or "")
    assert "does not decode" in (fuzz.check_reply(request, _reply(request, b"short")) or "")
    assert "flags" in (fuzz.check_reply(request, _reply(request, good, flags=0)) or "")
    quiet = _header(HeaderFlags.NO_REPLY)
    assert fuzz.check_reply(quiet, None) is None
    assert "no_reply" in (fuzz.check_reply(quiet, _reply(quiet, good)) or "")


def test_corpus_is_valid_for_every_command_and_cases_replay_exactly() -> None:
    corpus = fuzz.seed_corpus()
    assert {s.command for s in corpus} >= {int(c) for c in Command}
    for seed in corpus:  # our own codec accepts every seed the server understands
        if seed.command in m.REQUEST_DECODERS:
            m.decode_request(seed.command, seed.payload)
    one = fuzz.generate_case(random.Random(5), corpus, Limits())
    two = fuzz.generate_case(random.Random(5), corpus, Limits())
    assert one == two


def test_device_state_sees_register_irq_and_dma_changes(direct: fuzz.DirectTarget) -> None:
    device = direct.devices[0]
    before = fuzz.device_state(device)
    device.dma_map(0x100000, 0x1000, 3)
    mapped = fuzz.device_state(device)
    assert mapped != before
    device.client_gone()
    assert fuzz.device_state(device) != mapped
    efd = os.eventfd(0)
    device.set_irqs(0, 0x24, 0, 1, fds=(efd,))  # DATA_EVENTFD | ACTION_TRIGGER
    os.close(efd)
    triggered = fuzz.device_state(device)
    device.client_gone()
    assert fuzz.device_state(device) != triggered
    device.write(0, 0x4, 4, 0x1234)  # a plain register of the first device
    assert fuzz.device_state(device) != triggered
