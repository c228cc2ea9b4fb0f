"""``platpass scan`` through the real entry point, on real DTBs and the simulated board."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from platpass.cli import main
from platpass.cli.scan import sim_board_path
from platpass.firmware.verdict import Verdict
from real_dtbs import DTB_DIR

SHARED = DTB_DIR
RK3568 = SHARED / "rockchip__rk3568-evb1-v10.dtb"

KEYS = {"file", "path", "compatible", "status", "verdict", "reasons", "regions", "irqs",
        "driver", "consumers", "backend"}


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list, str]:
    code = main(["scan", "--json", *args])
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


def test_json_schema_on_a_real_board(capsys: pytest.CaptureFixture[str]) -> None:
    code, entries, _ = run_json(capsys, "--dtb", str(RK3568))
    assert code == 0
    assert entries and all(set(e) == KEYS for e in entries)
    uart2 = next(e for e in entries if e["path"] == "/serial@fe660000")
    assert uart2["file"] == str(RK3568)
    assert uart2["compatible"] == ["rockchip,rk3568-uart", "snps,dw-apb-uart"]
    assert uart2["status"] == "okay"
    assert uart2["regions"] == [{"address": 0xFE660000, "size": 0x100}]
    assert uart2["irqs"] == [{"controller": "/interrupt-controller@fd400000", "type": "SPI",
                              "number": 118, "trigger": "level-high"}]
    assert uart2["verdict"] in {v.value for v in Verdict}
    assert uart2["reasons"] and all(isinstance(r, str) for r in uart2["reasons"])
    assert uart2["driver"] is None or isinstance(uart2["driver"], str)
    usb = [e for e in entries if e["path"].startswith("/usb@")]
    assert usb and all(e["verdict"] == "REFUSED_BUS_MASTER" for e in usb)
    # non-MMIO nodes only with --all
    assert not any(e["path"].startswith("/cpus/") for e in entries)
    _, everything, _ = run_json(capsys, "--all", "--dtb", str(RK3568))
    assert any(e["path"] == "/cpus/cpu@0" for e in everything)
    assert len(everything) > len(entries)


def test_directory_with_a_bad_file_scans_the_rest(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(RK3568, tmp_path / "a.dtb")
    (tmp_path / "sub").mkdir()
    shutil.copy(SHARED / "arm__foundation-v8.dtb", tmp_path / "sub" / "c.dtb")
    (tmp_path / "b.dtb").write_bytes(b"this is not a device tree" * 4)
    code, entries, err = run_json(capsys, "--dtb", str(tmp_path))
    assert code == 1
    assert "b.dtb: not a device tree" in err
    assert {Path(e["file"]).name for e in entries} == {"a.dtb", "c.dtb"}


def test_table_output_and_missing_file(capsys: pytest.CaptureFixture[str],
                                       tmp_path: Path) -> None:
    code = main(["scan", "--dtb", str(RK3568), "--dtb", str(tmp_path / "nope.dtb")])
    captured = capsys.readouterr()
    assert code == 1
    assert "nope.dtb: No such file or directory" in captured.err
    assert "VERDICT" in captured.out and "/serial@fe660000" in captured.out
    assert "    - bus-master-" in captured.out
    assert "1 of 2 trees scanned" in captured.out


def test_several_files_after_one_flag(capsys: pytest.CaptureFixture[str]) -> None:
    foundation = SHARED / "arm__foundation-v8.dtb"
    code, entries, _ = run_json(capsys, "--dtb", str(RK3568), str(foundation))
    assert code == 0
    assert entries[0]["file"] == str(RK3568)
    assert {e["file"] for e in entries} == {str(RK3568), str(foundation)}
    # positional shorthand: a .dts is compiled, anything else is read as a blob
    code, again, _ = run_json(capsys, str(RK3568), str(sim_board_path()))
    assert code == 0
    assert {e["file"] for e in again} == {str(RK3568), str(sim_board_path())}


def test_broken_dts_reports_dtc_error(capsys: pytest.CaptureFixture[str],
                                      tmp_path: Path) -> None:
    bad = tmp_path / "bad.dts"
    bad.write_text("/dts-v1/;\n/ { oops\n")
    assert main(["scan", "--dts", str(bad)]) == 1
    assert "dtc failed" in capsys.readouterr().err


@pytest.mark.skipif(Path("/sys/firmware/fdt").exists(),
                    reason="this host has a live device tree, which scan prefers")
def test_default_source_is_the_simulated_board(capsys: pytest.CaptureFixture[str]) -> None:
    assert sim_board_path().exists()
    code, entries, _ = run_json(capsys)
    assert code == 0
    assert {e["file"] for e in entries} == {str(sim_board_path())}
    by_compat = {e["compatible"][0]: e for e in entries}
    for master in ("arm,pl330", "generic-xhci"):
        assert by_compat[master]["verdict"] == "REFUSED_BUS_MASTER"
    # the board exists to show the whole path: some of its devices must be assignable
    assert any(e["verdict"].startswith("ASSIGNABLE") for e in entries)


def test_progress_on_stderr_for_many_files(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["scan", "--json", "--dtb", str(SHARED)])
    captured = capsys.readouterr()
    assert code == 0
    assert "scanning:" in captured.err
    files = {e["file"] for e in json.loads(captured.out)}
    assert len(files) == len(list(SHARED.glob("*.dtb")))


def test_json_names_each_consumer_and_override_is_logged(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    dts = tmp_path / "board.dts"
    dts.write_text("""/dts-v1/;
/ {
    #address-cells = <1>; #size-cells = <1>;
    interrupt-parent = <&gic>;
    gic: interrupt-controller@1000000 { compatible = "arm,gic-400"; #interrupt-cells = <3>;
        interrupt-controller; reg = <0x1000000 0x1000>, <0x1002000 0x2000>; };
    pwm: pwm@10000 { compatible = "rockchip,rk3328-pwm"; reg = <0x10000 0x1000>;
                     #pwm-cells = <3>; };
    regulator-vdd-cpu { compatible = "pwm-regulator"; pwms = <&pwm 0 25000 1>; };
};
""")
    code, entries, _ = run_json(capsys, "--dts", str(dts))
    pwm = next(e for e in entries if e["path"] == "/pwm@10000")
    assert code == 0 and pwm["verdict"] == "REFUSED_HOST_IN_USE"
    assert pwm["consumers"] == [{"consumer": "/regulator-vdd-cpu", "property": "pwms",
                                 "supplier": "/pwm@10000"}]
    assert pwm["reasons"] == ["host-consumer: /regulator-vdd-cpu pwms -> /pwm@10000"]
    with caplog.at_level("WARNING", logger="platpass.override"):
        code, entries, _ = run_json(capsys, "--dts", str(dts),
                                    "--override", "/pwm@10000=host-consumer")
    pwm = next(e for e in entries if e["path"] == "/pwm@10000")
    assert pwm["verdict"] == "ASSIGNABLE"
    assert pwm["consumers"]  # still named
    assert pwm["reasons"][-1] == ("override: host-consumer = waived by the user: "
                                  "host-consumer: /regulator-vdd-cpu pwms -> /pwm@10000")
    assert "/pwm@10000: waived by the user" in caplog.text


def test_override_of_a_refusal_that_cannot_be_waived_is_a_usage_error(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["scan", "--json", "--override", "/serial@0=shared-interrupt"])
    assert "cannot be waived" in capsys.readouterr().err
