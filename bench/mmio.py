"""Register access cost through platpass' vfio-user server, beside the baselines.

Trapped path: a 4-byte REGION_READ round trip through ``VfioUserServer`` (another
process) with :class:`VfioUserClient`, beside a raw AF_UNIX request/reply of the same sizes
(32-byte request, 36-byte reply) between two Python processes in the same run. Target:
trapped <= 2x raw. The register read is the PL011's UARTDMACR, which the driver traps
(read-as-zero) so the figure is the protocol path itself; a read of the simulated PL031's
counter is shown beside it, which adds what the simulated model costs per access.

The server serves its clients from its loop, as ``platpass serve`` does by default; the
same UARTDMACR read through a second server on the same reactor that gives its clients
threads of their own (``serve --client-threads``: a blocking ``recvmsg`` per request
instead of the loop's ``epoll_wait`` and dispatch) is shown beside it. One quiet run on one
CPU (4 Dec 2026, ``--iterations 5000 --libvfio-user-server PATH``): 17.10 us through the
loop, 14.36 us on the client's thread (0.84x), 11.93 us for libvfio-user (1.43x and
1.20x), 9.91 us raw.

Server baseline in C: the same Python client against a C server that answers each
32-byte request with 36 bytes and does nothing else (built here with ``cc`` when there is
one) - the floor under any vfio-user server, libvfio-user's included.

libvfio-user's own server: with ``--libvfio-user-server PATH``, the same client also reads
BAR2 offset 0 (4 bytes) of libvfio-user's ``samples/gpio-pci-idio-16`` in the same run, and
the platpass reply is given as a ratio to it (goal: 1.05x). libvfio-user is packaged
neither for Debian nor on PyPI, so the bench does not build it: build it from its source
(``meson setup build -Dbuildtype=release && ninja -C build samples/gpio-pci-idio-16``,
with Debian's meson, ninja-build, pkg-config and libjson-c-dev) and pass the binary.

Posted writes: what the client pays for a REGION_WRITE with the no-reply flag
(``post_write``) beside one that waits for its reply (``write``), to the same trapped
register; and a burst of 8 writes followed by one read (which, by the server's ordering,
returns only after all 8 were applied), posted and replied.

Mapped path: a 4-byte read of the board PL031's ``RTCDR`` (the live counter; the simulated
PL031's page is mapped whole) through the mapping the client got from GET_REGION_INFO
(fd + offset), beside a 4-byte read of a private memfd mapping with the same
``memoryview.cast('I')`` access. Target: 1.0x.

Both processes are pinned (``os.sched_setaffinity``); each figure is measured with the
server on the same CPU as the client and on the other CPU, and the placement is printed.

    python3 bench/mmio.py [--iterations N] [--libvfio-user-server PATH]
"""

from __future__ import annotations

import argparse
import mmap
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import svgplot

REQUEST = 32
REPLY = 36


def _pin(cpu: int) -> None:
    os.sched_setaffinity(0, {cpu})


C_SERVER = r"""
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int l = socket(AF_UNIX, SOCK_STREAM, 0), c;
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    char req[32], reply[36] = {0};
    strncpy(a.sun_path, argv[1], sizeof a.sun_path - 1);
    if (argc < 2 || bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 1)) return 1;
    if (write(1, "ready\n", 6) != 6 || (c = accept(l, 0, 0)) < 0) return 1;
    for (;;) {
        if (read(c, req, sizeof req) <= 0) return 0;
        if (write(c, reply, sizeof reply) != sizeof reply) return 1;
    }
}
"""


def _c_server(tmp: str, cpu: int) -> tuple[subprocess.Popen[bytes], str] | None:
    """The C request/reply server, started on ``cpu``; None when there is no compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    source, binary, path = (os.path.join(tmp, n) for n in ("echo.c", "echo", "c.sock"))
    with open(source, "w") as f:
        f.write(C_SERVER)
    if subprocess.run([cc, "-O2", "-o", binary, source], check=False).returncode:
        return None
    proc = subprocess.Popen([binary, path], stdout=subprocess.PIPE,
                            preexec_fn=lambda: _pin(cpu))
    assert proc.stdout is not None
    if proc.stdout.readline() != b"ready\n":
        proc.kill()
        return None
    return proc, path


def _libvfio_user_server(binary: str, tmp: str,
                         cpu: int) -> tuple[subprocess.Popen[bytes], str]:
    """libvfio-user's gpio-pci-idio-16 sample serving ``tmp/lvu.sock``, pinned to ``cpu``."""
    path = os.path.join(tmp, "lvu.sock")
    proc = subprocess.Popen([binary, path], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, preexec_fn=lambda: _pin(cpu))
    deadline = time.monotonic() + 10
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"{binary} did not start serving {path}")
        time.sleep(0.01)
    return proc, path


def _raw_server(path: str, cpu: int, ready: mp.synchronize.Event) -> None:
    _pin(cpu)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    ready.set()
    conn, _ = listener.accept()
    buf = bytearray(REQUEST)
    reply = bytes(REPLY)
    while True:
        n = conn.recv_into(buf)
        if not n:
            return
        conn.send(reply)


#: UARTDMACR: the PL011 register platpass always traps (reads as zero, never reaches the
#: device) - the pure cost of the trapped path, with no device model behind it.
UARTDMACR = 0x48


def _device_server(sock_dir: str, cpu: int, ready: mp.synchronize.Event,
                   native: bool = True) -> None:
    _pin(cpu)
    from platpass.drivers.common import PlatformDriver, Trap
    from platpass.drivers.registry import default_registry
    from platpass.host.simulated.board import load_board, open_sim_backend
    from platpass.reactor import EpollReactor
    from platpass.vfio_device.device import VfioDevice
    from platpass.vfio_user.server import VfioUserServer

    nodes = load_board().devices()
    rtc = next(n for n in nodes if "arm,pl031" in n.compatible)
    uart = next(n for n in nodes if "arm,pl011" in n.compatible)

    def driver(node: object, compatible: tuple[str, ...]) -> PlatformDriver:
        cls = default_registry().match(compatible)
        if cls is None:  # register-level driver not installed yet: declare the DMACR trap
            cls = type("Bare", (PlatformDriver,), {
                "name": "bare", "family": "bench", "compatibles": compatible,
                "evidence": "bench", "traps": (Trap(0, UARTDMACR, 4, "UARTDMACR", "dma"),)
                if "arm,pl011" in compatible else ()})
        return cls(node)

    reactor = EpollReactor()
    if not native:  # the Python path of every connection, and the reactor's Python wait
        server = VfioUserServer(reactor, native=False)
        device = VfioDevice(uart, driver(uart, uart.compatible),
                            open_sim_backend(uart, reactor), reactor)
        server.serve("uart-python", device, Path(sock_dir) / "uart-python.sock")
        ready.set()
        reactor.run_forever()
        return
    # As ``platpass serve`` does by default: every client served by the loop. A second
    # server on the same loop gives its clients threads of their own (``serve
    # --client-threads 8``) and serves another PL011 instance: the same read, same run.
    server = VfioUserServer(reactor)
    threaded = VfioUserServer(reactor, client_threads=8)
    for name, node, where in (("uart", uart, server), ("rtc", rtc, server),
                              ("uart-thread", uart, threaded)):
        device = VfioDevice(node, driver(node, node.compatible),
                            open_sim_backend(node, reactor), reactor)
        where.serve(name, device, Path(sock_dir) / f"{name}.sock")
    ready.set()
    reactor.run_forever()


#: The samples (us) of the last timing, for ``--plot``'s CDFs.
_LAST: list[float] = []


def _percentiles(samples: list[int]) -> tuple[float, float]:
    samples.sort()
    _LAST[:] = [v / 1000 for v in samples]
    return statistics.median(samples) / 1000, samples[int(len(samples) * 0.99)] / 1000


def _time(fn: object, iterations: int) -> tuple[float, float]:
    call = fn  # local for speed
    for _ in range(iterations // 10):
        call()  # type: ignore[operator]
    clock = time.perf_counter_ns
    samples = []
    append = samples.append
    for _ in range(iterations):
        t0 = clock()
        call()  # type: ignore[operator]
        append(clock() - t0)
    return _percentiles(samples)


def _time_batched(fn: object, iterations: int, batch: int = 1000) -> tuple[float, float]:
    """For ns-scale operations: time batches, report per-access median/p99 (ns -> us)."""
    call = fn
    clock = time.perf_counter_ns
    samples = []
    for _ in range(max(iterations // batch, 20)):
        t0 = clock()
        for _ in range(batch):
            call()  # type: ignore[operator]
        samples.append((clock() - t0) // batch)
    return _percentiles(samples)


def run(client_cpu: int, server_cpu: int, iterations: int,
        lvu_binary: str | None = None,
        curves: dict[str, list[float]] | None = None) -> dict[str, tuple[float, float]]:
    """Every figure as (median, p99) in us; ``curves`` gets each one's samples (best round)."""
    from platpass.vfio_user.client import VfioUserClient

    ctx = mp.get_context("fork")
    results: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ready = ctx.Event()
        raw_path = os.path.join(tmp, "raw.sock")
        raw = ctx.Process(target=_raw_server, args=(raw_path, server_cpu, ready), daemon=True)
        raw.start()
        ready.wait(10)
        ready.clear()
        dev = ctx.Process(target=_device_server, args=(tmp, server_cpu, ready), daemon=True)
        dev.start()
        if not ready.wait(30):
            raise SystemExit("device server did not start")
        ready.clear()
        py_dev = ctx.Process(target=_device_server, args=(tmp, server_cpu, ready, False),
                             daemon=True)
        py_dev.start()
        if not ready.wait(30):
            raise SystemExit("device server (Python path) did not start")
        _pin(client_cpu)
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(raw_path)
            request = bytes(REQUEST)
            buf = bytearray(REPLY)
            send, recv_into = sock.send, sock.recv_into

            def raw_round_trip() -> None:
                send(request)
                recv_into(buf)

            c_server = _c_server(tmp, server_cpu)
            c_round_trip = None
            if c_server is not None:
                c_sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                c_sock.connect(c_server[1])
                c_send, c_recv_into = c_sock.send, c_sock.recv_into

                def c_round_trip() -> None:
                    c_send(request)
                    c_recv_into(buf)

            lvu_server = lvu = None
            if lvu_binary is not None:
                lvu_server = _libvfio_user_server(lvu_binary, tmp, server_cpu)
                lvu = VfioUserClient.connect(lvu_server[1])
                lvu_read = lvu.read

                def lvu_trapped() -> None:
                    lvu_read(2, 0, 4)  # BAR2 offset 0: the sample's input register

            uart = VfioUserClient.connect(os.path.join(tmp, "uart.sock"))
            rtc = VfioUserClient.connect(os.path.join(tmp, "rtc.sock"))
            uart_thread = VfioUserClient.connect(os.path.join(tmp, "uart-thread.sock"))
            uart_python = VfioUserClient.connect(os.path.join(tmp, "uart-python.sock"))
            uart_read, rtc_read, thread_read = uart.read, rtc.read, uart_thread.read
            python_read = uart_python.read
            uart_write, uart_post = uart.write, uart.post_write

            def trapped() -> None:
                uart_read(0, UARTDMACR, 4)

            def on_own_thread() -> None:
                thread_read(0, UARTDMACR, 4)

            def python_server() -> None:
                python_read(0, UARTDMACR, 4)

            def modelled() -> None:
                rtc_read(0, 0, 4)  # RTCDR: the simulated PL031 computes it on each read

            def replied_write() -> None:
                uart_write(0, UARTDMACR, 4, 0)

            def posted_write() -> None:
                uart_post(0, UARTDMACR, 4, 0)

            def replied_burst() -> None:
                for _ in range(8):
                    uart_write(0, UARTDMACR, 4, 0)
                uart_read(0, UARTDMACR, 4)

            def posted_burst() -> None:
                for _ in range(8):
                    uart_post(0, UARTDMACR, 4, 0)
                uart_read(0, UARTDMACR, 4)

            # Interleave, so that every figure sees the same machine state.
            figures = {"raw": (raw_round_trip, 2), "trapped": (trapped, 2),
                       "thread": (on_own_thread, 2), "python": (python_server, 2),
                       "modelled": (modelled, 4), "write": (replied_write, 2),
                       "posted": (posted_write, 2), "burst": (replied_burst, 16),
                       "posted_burst": (posted_burst, 16)}
            if c_round_trip is not None:
                figures["c_raw"] = (c_round_trip, 2)
            if lvu is not None:
                figures["lvu"] = (lvu_trapped, 2)
            runs: dict[str, list[tuple[float, float]]] = {key: [] for key in figures}
            for _round in range(2):
                for key, (fn, share) in figures.items():
                    runs[key].append(_time(fn, iterations // share))
                    if curves is not None and runs[key][-1][0] == min(r[0] for r in runs[key]):
                        curves[key] = list(_LAST)
            for key, timed in runs.items():
                results[key] = (min(f[0] for f in timed), min(f[1] for f in timed))
            if lvu_server is not None and lvu is not None:
                lvu.close()
                lvu_server[0].kill()
                lvu_server[0].wait()
            if c_server is not None:
                c_sock.close()
                c_server[0].kill()
                c_server[0].wait()

            region = rtc.map_region(0)  # the board's PL031: its one page, mapped whole
            area = region.areas[0]
            mapped_view = area.u32
            index = (0x000 - area.offset) >> 2  # RTCDR
            fd = os.memfd_create("direct")
            os.ftruncate(fd, mmap.PAGESIZE)
            direct_map = mmap.mmap(fd, mmap.PAGESIZE)
            direct_view = memoryview(direct_map).cast("I")
            # The same value as the counter (a large int, built on every read in Python;
            # a zero would come from the small-int cache and make the baseline ~7 ns
            # cheaper than any real register value).
            direct_view[0] = mapped_view[index]

            def mapped() -> int:
                return mapped_view[index]

            direct_index = 0  # a closure variable, like ``index`` above: same bytecode

            def direct() -> int:
                return direct_view[direct_index]

            results["direct"] = _time_batched(direct, iterations * 50)
            results["mapped"] = _time_batched(mapped, iterations * 50)
            direct2 = _time_batched(direct, iterations * 50)
            mapped2 = _time_batched(mapped, iterations * 50)
            results["direct"] = min(results["direct"], direct2)
            results["mapped"] = min(results["mapped"], mapped2)
            direct_view.release()
            direct_map.close()
            os.close(fd)
            sock.close()
            uart.close()
            uart_thread.close()
            uart_python.close()
            region.close()
            rtc.close()
        finally:
            raw.kill()
            dev.kill()
            py_dev.kill()
            raw.join()
            dev.join()
            py_dev.join()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=20000)
    parser.add_argument("--libvfio-user-server", metavar="PATH",
                        help="libvfio-user's built samples/gpio-pci-idio-16, read with the "
                             "same client in the same run")
    parser.add_argument("--plot", metavar="FILE.svg",
                        help="also draw the round-trip latency CDFs against the raw AF_UNIX "
                             "baseline, per placement, and the mapped-read figure")
    args = parser.parse_args()
    panels: list[svgplot.Panel] = []
    mapped_ns: dict[str, list[float]] = {"direct mmap read (baseline)": [],
                                         "mapped register read": []}
    cpus = sorted(os.sched_getaffinity(0))
    placements = [(cpus[0], cpus[0])]
    if len(cpus) > 1:
        placements.append((cpus[0], cpus[1]))
    from platpass.vfio_user import native

    print(f"python {sys.version.split()[0]}, {len(cpus)} CPUs available, "
          f"{args.iterations} round trips per figure; server and client: "
          f"{native.describe()}")
    for client_cpu, server_cpu in placements:
        where = "same CPU" if client_cpu == server_cpu else "different CPUs"
        curves: dict[str, list[float]] = {}
        r = run(client_cpu, server_cpu, args.iterations, args.libvfio_user_server, curves)
        named = {"raw AF_UNIX request/reply (baseline)": "raw",
                 "C server, same sizes": "c_raw", "trapped REGION_READ": "trapped",
                 "replied REGION_WRITE": "write", "posted REGION_WRITE": "posted"}
        panels.append(svgplot.cdf(
            f"vfio-user round trip, {where} (trapped/raw {r['trapped'][0] / r['raw'][0]:.2f}x)",
            {label: curves[key] for label, key in named.items() if key in curves}))
        mapped_ns["direct mmap read (baseline)"].append(r["direct"][0] * 1000)
        mapped_ns["mapped register read"].append(r["mapped"][0] * 1000)
        print(f"\nclient on CPU {client_cpu}, server on CPU {server_cpu} ({where})")
        print(f"  raw AF_UNIX 32/36 B request/reply : median {r['raw'][0]:7.2f} us  "
              f"p99 {r['raw'][1]:7.2f} us")
        print(f"  trapped REGION_READ 4 B via server: median {r['trapped'][0]:7.2f} us  "
              f"p99 {r['trapped'][1]:7.2f} us   ratio {r['trapped'][0] / r['raw'][0]:.2f}x "
              f"(p99 {r['trapped'][1] / r['raw'][1]:.2f}x, target <= 2x)  [PL011 UARTDMACR]")
        print(f"  same, server's Python path         : median {r['python'][0]:7.2f} us  "
              f"p99 {r['python'][1]:7.2f} us   C / Python "
              f"{r['trapped'][0] / r['python'][0]:.2f}x (PLATPASS_NATIVE=0 in the server)")
        print(f"  same, client on a thread of its own: median {r['thread'][0]:7.2f} us  "
              f"p99 {r['thread'][1]:7.2f} us   own thread / loop "
              f"{r['thread'][0] / r['trapped'][0]:.2f}x (serve --client-threads)")
        if "c_raw" in r:
            print(f"  C server, same sizes (its floor)   : median {r['c_raw'][0]:7.2f} us  "
                  f"p99 {r['c_raw'][1]:7.2f} us   trapped / C "
                  f"{r['trapped'][0] / r['c_raw'][0]:.2f}x (platpass server vs a C server "
                  "doing nothing, same client)")
        else:
            print("  C server baseline: no C compiler here")
        if "lvu" in r:
            print(f"  libvfio-user gpio-pci-idio-16 BAR2: median {r['lvu'][0]:7.2f} us  "
                  f"p99 {r['lvu'][1]:7.2f} us   platpass / libvfio-user "
                  f"{r['trapped'][0] / r['lvu'][0]:.2f}x, with --client-threads "
                  f"{r['thread'][0] / r['lvu'][0]:.2f}x (target <= 1.05x, same client)")
        print(f"  replied REGION_WRITE 4 B          : median {r['write'][0]:7.2f} us  "
              f"p99 {r['write'][1]:7.2f} us")
        print(f"  posted REGION_WRITE 4 B (no reply): median {r['posted'][0]:7.2f} us  "
              f"p99 {r['posted'][1]:7.2f} us   posted / replied "
              f"{r['posted'][0] / r['write'][0]:.2f}x")
        print(f"  8 writes + 1 read, replied        : median {r['burst'][0]:7.2f} us")
        print(f"  8 writes + 1 read, posted         : median {r['posted_burst'][0]:7.2f} us"
              f"   ratio {r['posted_burst'][0] / r['burst'][0]:.2f}x")
        print(f"  same, register of the PL031 model : median {r['modelled'][0]:7.2f} us  "
              f"p99 {r['modelled'][1]:7.2f} us   ratio {r['modelled'][0] / r['raw'][0]:.2f}x "
              f"(includes the simulated model's own read cost)")
        print(f"  direct memfd mmap 4 B read       : median {r['direct'][0] * 1000:7.1f} ns")
        print(f"  mapped register 4 B read         : median {r['mapped'][0] * 1000:7.1f} ns"
              f"   ratio {r['mapped'][0] / r['direct'][0]:.2f}x (target 1.0x)  "
              "[PL031 RTCDR]")
    if args.plot:
        groups = ["same CPU", "different CPUs"][:len(placements)]
        panels.append(svgplot.bars("Register read through the mapped page (median)",
                                   groups, mapped_ns, "ns per 4-byte read"))
        svgplot.write(args.plot, "bench/mmio.py: trapped and mapped register access",
                      panels, note=f"python3 bench/mmio.py --iterations {args.iterations} "
                                   f"--plot FILE.svg; CPUs {cpus}")
        print(f"\nplot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
