"""Third-party drivers through the ``platpass.drivers`` entry-point group.

Each test writes a real installed-distribution layout (``*.dist-info`` with METADATA and
entry_points.txt, plus the plugin's module) into a temporary directory on ``sys.path``,
which is exactly what ``pip install`` of a plugin package leaves behind.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from platpass.drivers.registry import ENTRY_POINT_GROUP, default_registry
from platpass.errors import DriverError


def _install_plugin(root: Path, dist: str, module: str, source: str, entry: str) -> None:
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{entry}\n")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("acme_platpass_")]:
        del sys.modules[name]


ACME_DRIVER = """
    from platpass.drivers.common import PlatformDriver, RegisterWrite

    class AcmeTimer(PlatformDriver):
        name = "acme-timer"
        compatibles = ("acme,timer-1.0",)
        family = "watchdog"
        evidence = "drivers/watchdog/acme_wdt.c: counter registers only"
        reset_sequence = (RegisterWrite(0, 0x0, 4, 0),)

    class AcmeGpio(PlatformDriver):
        name = "acme-gpio"
        compatibles = ("acme,gpio",)
        family = "gpio"
        evidence = "drivers/gpio/gpio-acme.c: data and direction registers"

    DRIVERS = (AcmeTimer, AcmeGpio)
"""


def test_entry_point_naming_a_class_is_registered(site: Path) -> None:
    _install_plugin(site, "acme_platpass_timer", "acme_platpass_timer", ACME_DRIVER,
                    "acme-timer = acme_platpass_timer:AcmeTimer")
    registry = default_registry()
    driver = registry.match(["acme,timer-1.0"])
    assert driver is not None and driver.name == "acme-timer"
    assert registry.match(["acme,gpio"]) is None  # only the class the entry point names
    assert registry.match(["snps,dw-apb-uart"]) is not None  # built-ins are still there
    assert default_registry(plugins=False).match(["acme,timer-1.0"]) is None


def test_entry_point_naming_a_module_registers_its_drivers_tuple(site: Path) -> None:
    _install_plugin(site, "acme_platpass_all", "acme_platpass_all", ACME_DRIVER,
                    "acme = acme_platpass_all")
    registry = default_registry()
    assert registry.match(["acme,timer-1.0"]).name == "acme-timer"
    assert registry.match(["acme,gpio"]).name == "acme-gpio"


def test_plugin_claiming_a_builtin_compatible_is_refused(site: Path) -> None:
    _install_plugin(site, "acme_platpass_clash", "acme_platpass_clash", """
        from platpass.drivers.common import PlatformDriver

        class FakeDw(PlatformDriver):
            name = "acme-fake-dw"
            compatibles = ("snps,dw-apb-uart",)
            family = "uart"
            evidence = "drivers/tty/serial/acme.c"
    """, "fake = acme_platpass_clash:FakeDw")
    with pytest.raises(DriverError, match="snps,dw-apb-uart"):
        default_registry()


def test_broken_plugin_is_reported_not_crashed(site: Path) -> None:
    _install_plugin(site, "acme_platpass_broken", "acme_platpass_broken",
                    "raise ImportError('missing vendor SDK')\n",
                    "broken = acme_platpass_broken:Driver")
    with pytest.raises(DriverError, match="broken"):
        default_registry()


def test_entry_point_naming_something_else_is_refused(site: Path) -> None:
    _install_plugin(site, "acme_platpass_other", "acme_platpass_other", "VALUE = 3\n",
                    "other = acme_platpass_other:VALUE")
    with pytest.raises(DriverError, match="neither a driver nor a module"):
        default_registry()
