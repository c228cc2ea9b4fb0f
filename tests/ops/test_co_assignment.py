"""Co-assignment groups and host-use overrides outside ``guest-dt``: ``--together`` on
``scan``/``serve``/``assign``, and ``together``/``override`` in ``up``'s TOML (issue 12,
rule 3: a child that needs an interrupt or GPIO of a host bank may go to a guest only
together with that bank).

The board: a DesignWare I2C controller whose DS1338 RTC takes its interrupt from a PL061
bank outside the controller. Alone, the controller needs a host resource and the bank has
a consumer outside its subtree: both are refused. Together they are one subtree."""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from platpass.assembly.plan import merge_groups
from platpass.cli.host_use import together
from platpass.errors import ConfigError
from platpass.ops.config import parse_config
from platpass.ops.service import assign_command, co_assignment_groups, plan
from platpass.vfio_user.client import VfioUserClient

GPIO = "/gpio@9030000"
I2C = "/i2c@9040000"

BOARD = """/dts-v1/;
/ {
	#address-cells = <1>; #size-cells = <1>;
	interrupt-parent = <&gic>;
	gic: interrupt-controller@8000000 { compatible = "arm,gic-400";
		reg = <0x8000000 0x1000>, <0x8010000 0x1000>;
		interrupt-controller; #interrupt-cells = <3>; };
	gpio: gpio@9030000 { compatible = "arm,pl061", "arm,primecell";
		reg = <0x9030000 0x1000>; interrupts = <0 7 4>;
		gpio-controller; #gpio-cells = <2>; interrupt-controller; #interrupt-cells = <2>;
		clocks = <&apb>; clock-names = "apb_pclk"; };
	i2c@9040000 { compatible = "snps,designware-i2c"; reg = <0x9040000 0x1000>;
		interrupts = <0 8 4>; clocks = <&apb>; #address-cells = <1>; #size-cells = <0>;
		rtc@68 { compatible = "dallas,ds1338"; reg = <0x68>;
			interrupts-extended = <&gpio 3 8>; };
	};
	apb: apb-pclk { compatible = "fixed-clock"; #clock-cells = <0>;
		clock-frequency = <24000000>; };
};
"""


@pytest.fixture
def board(tmp_path: Path) -> Path:
    path = tmp_path / "board.dts"
    path.write_text(BOARD)
    return path


def _config(tmp_path: Path, board: Path, i2c_extra: str = "", gpio_extra: str = "",
            backend: str = "sim") -> str:
    return f"""
[service]
run_dir = "{tmp_path}/run"
[[device]]
node = "{I2C}"
source = "dts"
firmware = "{board}"
backend = "{backend}"
socket = "{tmp_path}/i2c.sock"
{i2c_extra}
[[device]]
node = "{GPIO}"
source = "dts"
firmware = "{board}"
backend = "{backend}"
socket = "{tmp_path}/gpio.sock"
{gpio_extra}
"""


def test_groups_that_share_a_node_are_one_group() -> None:
    assert merge_groups([["/a", "/b"], ["/c", "/d"], ["/d", "/b"], ["/e"]]) == [
        ["/a", "/b", "/c", "/d"]]
    assert merge_groups([["/x", "/y"], ["/z", "/w"]]) == [["/w", "/z"], ["/x", "/y"]]
    with pytest.raises(argparse.ArgumentTypeError, match="two or more nodes"):
        together("/only-one")


def test_toml_without_a_group_refuses_both_with_the_reasons(tmp_path: Path,
                                                            board: Path) -> None:
    config = parse_config(_config(tmp_path, board), tmp_path / "lab.toml")
    with pytest.raises(ConfigError) as info:
        plan(config, probe_sockets=False)
    lines = str(info.value).splitlines()
    assert lines[0].startswith(f"{tmp_path}/lab.toml: device[0].node: {I2C}: "
                               "REFUSED_HOST_IN_USE: needs-host-resource: ")
    assert lines[1].startswith(f"{tmp_path}/lab.toml: device[1].node: {GPIO}: "
                               f"REFUSED_HOST_IN_USE: host-consumer: {I2C}/rtc@68 "
                               "interrupts-extended")


def test_toml_together_on_one_side_groups_both(tmp_path: Path, board: Path) -> None:
    config = parse_config(_config(tmp_path, board, i2c_extra=f'together = ["{GPIO}"]'),
                          tmp_path / "lab.toml")
    assert [d.together for d in config.devices] == [(GPIO,), ()]
    assert list(co_assignment_groups(config).values()) == [[[GPIO, I2C]]]
    planned = plan(config, probe_sockets=False)
    assert [p.export.assessment.node.path for p in planned] == [I2C, GPIO]
    assert all(p.export.assessment.may_assign for p in planned)


def test_toml_override_is_validated_applied_and_logged(
        tmp_path: Path, board: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = _config(tmp_path, board, i2c_extra='override = ["bus-master", "nope"]')
    with pytest.raises(ConfigError, match=r"device\[0\]\.override: bus-master, nope cannot "
                                          r"be waived; only "):
        parse_config(bad, tmp_path / "lab.toml")
    with pytest.raises(ConfigError, match=r"device\[0\]\.override: must be a list of "
                                          r"strings, got 'host-consumer'"):
        parse_config(_config(tmp_path, board, i2c_extra='override = "host-consumer"'),
                     tmp_path / "lab.toml")
    # The user knows the RTC's interrupt line is not wired on this board: waive both.
    config = parse_config(_config(tmp_path, board,
                                  i2c_extra='override = ["needs-host-resource"]',
                                  gpio_extra='override = ["host-consumer"]'),
                          tmp_path / "lab.toml")
    with caplog.at_level(logging.WARNING, logger="platpass.override"):
        planned = plan(config, probe_sockets=False)
    assert all(p.export.assessment.may_assign for p in planned)
    assert [e.property for p in planned for e in p.export.assessment.waived] == [
        "needs-host-resource", "host-consumer"]
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 2 and f"{I2C}: waived by the user: needs-host-resource" in logged[0]


def test_toml_together_must_name_a_served_node_of_the_same_tree(tmp_path: Path,
                                                                 board: Path) -> None:
    text = _config(tmp_path, board, i2c_extra='together = ["/gpio@dead", "relative", '
                                              f'"{I2C}"]')
    with pytest.raises(ConfigError) as info:
        parse_config(text, tmp_path / "lab.toml")
    assert str(info.value).splitlines() == [
        f"{tmp_path}/lab.toml: device[0].together: must list device-tree paths starting "
        "with '/', got 'relative'",
        f"{tmp_path}/lab.toml: device[0].together: {I2C} is this device's own node",
    ]
    with pytest.raises(ConfigError, match=r"device\[0\]\.together: /gpio@dead is not the "
                                          r"node of a \[\[device\]\] with the same source"):
        parse_config(_config(tmp_path, board, i2c_extra='together = ["/gpio@dead"]'),
                     tmp_path / "lab.toml")


def test_kernel_devices_pass_group_and_overrides_to_assign(tmp_path: Path) -> None:
    text = f"""
[[device]]
node = "{I2C}"
source = "live"
backend = "vfio"
socket = "{tmp_path}/i2c.sock"
together = ["{GPIO}"]
override = ["system-reset", "host-consumer"]
[[device]]
node = "{GPIO}"
source = "live"
backend = "vfio"
socket = "{tmp_path}/gpio.sock"
"""
    config = parse_config(text, tmp_path / "lab.toml")
    i2c, gpio = config.devices
    argv = assign_command(i2c, None, config)
    assert argv[argv.index("--override"):argv.index("--override") + 4] == [
        "--override", f"{I2C}=host-consumer,system-reset", "--together", GPIO]
    # the group is symmetric: the bank's assign names the controller
    argv = assign_command(gpio, None, config)
    assert "--override" not in argv
    assert argv[argv.index("--together") + 1] == I2C


def test_scan_together_changes_both_verdicts(board: Path) -> None:
    def verdicts(*extra: str) -> list[str]:
        out = subprocess.run([sys.executable, "-m", "platpass", "scan", "--dts", str(board),
                              *extra], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return [line.split()[0] + " " + line.split()[1] for line in out.stdout.splitlines()
                if line.split() and line.split()[1] in (GPIO, I2C)]

    assert verdicts() == [f"REFUSED_HOST_IN_USE {GPIO}", f"REFUSED_HOST_IN_USE {I2C}"]
    assert verdicts("--together", f"{I2C},{GPIO}") == [
        f"ASSIGNABLE_WITH_TRAPS {GPIO}", f"ASSIGNABLE {I2C}"]


#: For ``serve --backend sim``: a PL011 whose Bluetooth child (serdev) takes its host-wake
#: interrupt from the PL061 bank; both have simulated models.
UART_BOARD = BOARD.replace("i2c@9040000 {", """serial@9000000 { compatible = "arm,pl011",
		"arm,primecell"; reg = <0x9000000 0x1000>; interrupts = <0 1 4>;
		clocks = <&apb>, <&apb>; clock-names = "uartclk", "apb_pclk";
		bluetooth { compatible = "brcm,bcm43438-bt"; interrupts-extended = <&gpio 4 8>; };
	};
	i2c@9040000 { status = "disabled";""", 1)
UART = "/serial@9000000"


def test_serve_together_serves_the_pair_and_refuses_a_bad_group(tmp_path: Path) -> None:
    board = tmp_path / "uart.dts"
    board.write_text(UART_BOARD)
    base = [sys.executable, "-m", "platpass", "serve", "--dts", str(board), "--backend",
            "sim", UART]
    alone = subprocess.run([*base, "--socket", str(tmp_path / "uart.sock")],
                           capture_output=True, text=True, timeout=60)
    assert alone.returncode == 1 and "needs-host-resource" in alone.stderr, alone.stderr
    missing = subprocess.run([*base, "--socket", str(tmp_path / "uart.sock"), "--together",
                              f"{UART},/gpio@dead"], capture_output=True, text=True,
                             timeout=60)
    assert missing.returncode == 2
    assert missing.stderr.startswith("platpass serve: --together: ")
    assert "/gpio@dead" in missing.stderr and len(missing.stderr.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["uart.dts"]
    sockets = tmp_path / "sockets"
    proc = subprocess.Popen([*base, GPIO, "--socket-dir", str(sockets),
                             "--together", f"{GPIO},{UART}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.strip() == "ready":
                break
        served = sorted(p.name for p in sockets.iterdir())
        assert len(served) == 2, served
        for name in served:
            with VfioUserClient.connect(sockets / name) as client:
                assert client.device_info().num_regions >= 1
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0, proc.stderr.read()  # type: ignore[union-attr]
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]


def test_assign_judges_the_node_with_its_together_nodes(tmp_path: Path, board: Path) -> None:
    from platpass.cli.assign import _assess
    from platpass.errors import HostError

    dtb = tmp_path / "board.dtb"
    subprocess.run(["dtc", "-q", "-I", "dts", "-O", "dtb", "-o", str(dtb), str(board)],
                   check=True, timeout=60)
    assert not _assess(I2C, str(dtb)).may_assign
    assert _assess(I2C, str(dtb), (), [(GPIO,)]).may_assign
    with pytest.raises(HostError, match=r"--together: .*gpio@dead"):
        _assess(I2C, str(dtb), (), [("/gpio@dead",)])
