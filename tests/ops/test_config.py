"""Configuration files: strict validation with exact messages, and nothing started on error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from platpass.errors import ConfigError
from platpass.ops.config import load_config, parse_config
from platpass.ops.service import assign_command, plan

GPIO = "/soc@9000000/gpio@30000"


def _error(text: str, path: str = "/etc/platpass/lab.toml") -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, path)
    return str(info.value)


def test_a_valid_file_gives_numeric_modes_and_defaults(tmp_path: Path) -> None:
    config = parse_config(f"""
[service]
name = "lab"
run_dir = "{tmp_path}/run"
log_format = "json"

[[device]]
node = "{GPIO}"
source = "sim"
socket = "{tmp_path}/gpio.sock"
mode = "0660"
owner = "root"
allow_uids = [0, 1000]
allow_gids = ["root"]
dma = "deny"
guest_address = 0x9030000
guest_spis = [7]
""", tmp_path / "x.toml")
    assert config.name == "lab" and config.log_format == "json" and config.log_level == "info"
    assert config.control_path == tmp_path / "run" / "lab.ctl"
    (device,) = config.devices
    assert (device.backend, device.mode, device.owner, device.dma) == ("sim", 0o660, 0, "deny")
    assert device.allow_uids == {0, 1000} and device.allow_gids == {0}
    assert (device.guest_address, device.guest_spis) == (0x9030000, (7,))


def test_name_defaults_to_the_file_stem(tmp_path: Path) -> None:
    config = parse_config(f'[[device]]\nnode = "{GPIO}"\nsource = "sim"\n'
                          f'socket = "{tmp_path}/g.sock"\n', "/etc/platpass/bench-a.toml")
    assert config.name == "bench-a" and str(config.run_dir) == "/run/platpass"


def test_unknown_keys_are_named_with_the_known_ones(tmp_path: Path) -> None:
    message = _error(f'[[device]]\nnode = "{GPIO}"\nsource = "sim"\n'
                     f'socket = "{tmp_path}/g.sock"\nsockt = "x"\n')
    assert message == (
        "/etc/platpass/lab.toml: device[0]: unknown key 'sockt' (known: node, source, "
        "firmware, backend, socket, owner, group, mode, allow_uids, allow_gids, dma, "
        "guest_address, guest_spis, pci, override, together)")
    assert _error('[services]\nname = "x"\n[[device]]\n').splitlines()[0] == (
        "/etc/platpass/lab.toml: top level: unknown key 'services' (known: service, device)")


def test_every_problem_is_listed_one_per_line(tmp_path: Path) -> None:
    message = _error("""
[service]
log_level = "loud"

[[device]]
node = "soc/gpio"
source = "dtb"
backend = "sim"
socket = "relative.sock"
mode = "0999"
guest_address = 0x1001
guest_spis = [7, 7]
""")
    assert message.splitlines() == [
        "/etc/platpass/lab.toml: service.log_level: 'loud' is not one of debug, info, "
        "warning, error",
        "/etc/platpass/lab.toml: device[0].node: must be a device-tree path starting with "
        "'/', got 'soc/gpio'",
        "/etc/platpass/lab.toml: device[0]: source 'dtb' needs key 'firmware' (the file)",
        "/etc/platpass/lab.toml: device[0].socket: must be an absolute path, got "
        "'relative.sock'",
        "/etc/platpass/lab.toml: device[0].mode: must be an octal permission string "
        "like \"0660\", got '0999'",
        "/etc/platpass/lab.toml: device[0].guest_address: must be a page-aligned (0x1000) "
        "address, got 4097",
        "/etc/platpass/lab.toml: device[0].guest_spis: SPIs repeat: [7, 7]",
    ]


def test_the_sim_backend_needs_a_described_board(tmp_path: Path) -> None:
    assert _error(f'[[device]]\nnode = "{GPIO}"\nsource = "live"\nbackend = "sim"\n'
                  f'socket = "{tmp_path}/g.sock"\n') == (
        "/etc/platpass/lab.toml: device[0].backend: the sim backend models a described "
        "board; source 'live' is this host's hardware")


def test_bad_paths(tmp_path: Path) -> None:
    assert _error(f'[[device]]\nnode = "{GPIO}"\nsource = "dtb"\n'
                  f'firmware = "{tmp_path}/none.dtb"\nbackend = "uio"\n'
                  f'socket = "{tmp_path}/nodir/g.sock"\n').splitlines() == [
        f"/etc/platpass/lab.toml: device[0].firmware: {tmp_path}/none.dtb does not exist",
        f"/etc/platpass/lab.toml: device[0].socket: directory {tmp_path}/nodir does not "
        "exist",
    ]
    (tmp_path / "file").write_text("")
    assert _error(f'[[device]]\nnode = "{GPIO}"\nsource = "sim"\n'
                  f'socket = "{tmp_path}/file"\n') == (
        f"/etc/platpass/lab.toml: device[0].socket: {tmp_path}/file exists and is not a "
        "socket")


def test_duplicate_sockets_and_nodes(tmp_path: Path) -> None:
    device = f'[[device]]\nnode = "{GPIO}"\nsource = "sim"\nsocket = "{tmp_path}/g.sock"\n'
    other = (f'[[device]]\nnode = "/soc@9000000/serial@0"\nsource = "sim"\n'
             f'socket = "{tmp_path}/./g.sock"\n')
    assert _error(device + other) == (
        f"/etc/platpass/lab.toml: device[1]: socket {tmp_path}/g.sock is already used by "
        "device[0]")
    assert _error(device + device.replace("g.sock", "h.sock")) == (
        f"/etc/platpass/lab.toml: device[1]: node {GPIO} is already served by device[0]")


def test_kernel_backends_refuse_what_assign_cannot_do(tmp_path: Path) -> None:
    message = _error(f'[[device]]\nnode = "{GPIO}"\nsource = "dts"\nbackend = "vfio"\n'
                     f'firmware = "{tmp_path}/b.dts"\nsocket = "{tmp_path}/g.sock"\n'
                     f'[[device]]\nnode = "/x"\nsource = "sim"\nbackend = "uio"\n'
                     f'socket = "{tmp_path}/h.sock"\n')
    assert [line for line in message.splitlines() if ".backend" in line] == [
        "/etc/platpass/lab.toml: device[0].backend: 'vfio' judges the device on the live "
        "tree or a dtb (platpass assign); source 'dts' is not supported",
        "/etc/platpass/lab.toml: device[1].backend: 'uio' drives real hardware; the "
        "simulated board needs backend 'sim'",
    ]


def test_kernel_backends_take_the_peer_allow_list(tmp_path: Path) -> None:
    """``platpass assign`` has ``--allow-uid``/``--allow-gid`` now: a kernel device keeps
    its allow-list, and ``up`` passes it (and the service user) to assign."""
    config = parse_config(f'[service]\nuser = "65534:65534"\n'
                          f'[[device]]\nnode = "{GPIO}"\nsource = "live"\n'
                          f'backend = "vfio"\nsocket = "{tmp_path}/g.sock"\n'
                          f'allow_uids = [1000, 0]\nallow_gids = [0]\n',
                          tmp_path / "lab.toml")
    (device,) = config.devices
    assert device.kernel and device.allow_uids == {0, 1000} and device.allow_gids == {0}
    argv = assign_command(device, config.user)
    assert argv[argv.index("--socket"):] == [
        "--socket", f"{tmp_path}/g.sock", "--mode", "600", "--allow-uid", "0",
        "--allow-uid", "1000",
        "--allow-gid", "0", "--user", "65534:65534"]


def test_unknown_users_and_missing_keys(tmp_path: Path) -> None:
    assert _error(f'[[device]]\nnode = "{GPIO}"\nsource = "sim"\n'
                  f'socket = "{tmp_path}/g.sock"\nowner = "no-such-user-pp"\n'
                  'allow_gids = ["no-such-group-pp"]\n').splitlines() == [
        "/etc/platpass/lab.toml: device[0].owner: no such user 'no-such-user-pp'",
        "/etc/platpass/lab.toml: device[0].allow_gids: no such group 'no-such-group-pp'",
    ]
    assert _error("[[device]]\n").splitlines() == [
        "/etc/platpass/lab.toml: device[0]: missing key 'node' (the device-tree path)",
        "/etc/platpass/lab.toml: device[0]: missing key 'source' (sim, dtb, dts, live)",
        "/etc/platpass/lab.toml: device[0]: missing key 'socket' (absolute path of the "
        "vfio-user socket)",
    ]
    assert _error("") == "/etc/platpass/lab.toml: device: no [[device]] table: nothing to serve"


def test_toml_syntax_errors_name_the_file() -> None:
    assert _error('[[device]]\nnode = "/x\n').startswith(
        "/etc/platpass/lab.toml: not valid TOML: ")


def test_refused_and_missing_nodes_are_config_errors_before_anything_starts(
        tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    path.write_text(f"""
[service]
run_dir = "{tmp_path}/run"
[[device]]
node = "{GPIO}"
source = "sim"
socket = "{tmp_path}/gpio.sock"
[[device]]
node = "/soc@9000000/ethernet@200000"
source = "sim"
socket = "{tmp_path}/eth.sock"
[[device]]
node = "/soc@9000000/nothing@0"
source = "sim"
socket = "{tmp_path}/none.sock"
""")
    config = load_config(path)
    with pytest.raises(ConfigError) as info:
        plan(config)
    lines = str(info.value).splitlines()
    assert lines[0].startswith(f"{path}: device[1].node: /soc@9000000/ethernet@200000: "
                               "REFUSED_BUS_MASTER: ")
    assert lines[1] == (f"{path}: device[2].node: /soc@9000000/nothing@0: no such device "
                        "node in the tree")
    # The command line says the same and leaves nothing behind.
    result = subprocess.run([sys.executable, "-m", "platpass", "up", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "REFUSED_BUS_MASTER" in result.stderr and "nothing@0" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lab.toml"]


def test_pci_personality_key(tmp_path: Path) -> None:
    base = f'[[device]]\nnode = "{GPIO}"\nsource = "sim"\nsocket = "{tmp_path}/g.sock"\n'
    assert parse_config(base, "/x.toml").devices[0].pci is None
    assert parse_config(base + 'pci = "auto"\n', "/x.toml").devices[0].pci == "auto"
    assert parse_config(base + 'pci = "115d:0101"\n', "/x.toml").devices[0].pci == "115d:0101"
    assert _error(base + 'pci = "115d"\n') == (
        "/etc/platpass/lab.toml: device[0].pci: PCI ID '115d': want auto or VVVV:DDDD (hex)")
