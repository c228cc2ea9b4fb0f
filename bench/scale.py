"""One ``platpass serve`` process, 256 devices: trapped-read latency with 1 vs 256 clients.

A device tree of 256 PL031 RTCs (each its own page and SPI, so every one is ASSIGNABLE) is
generated and served by the real ``platpass serve --dts ... --backend sim --socket-dir``
in a subprocess. Worker processes connect one vfio-user client to every device (each
worker holds 256 / W of them) and stay connected. Then, alternating in chunks so that
both figures see the same machine state:

* **1 active client** (baseline): worker 0 reads through its first socket only, one
  REGION_READ after the other; the other 255 clients are connected and idle;
* **256 active clients**: every worker reads through all its sockets in turn
  (round-robin), so all 256 clients are active and W requests are in flight at once;
* control, **W active clients**: every worker reads through its first socket only - the
  same concurrency as the 256 row with W clients. The 256 row against this one is what
  the number of clients costs; this one against the baseline is what W requests in flight
  cost (queueing in the one server thread, and wake-ups across CPUs).

Each figure is the latency of one 4-byte REGION_READ of RTCDR (a trapped access the model
computes on each read) as the client sees it, p50 and p99 over every sample. Target: p99
with 256 active clients within 2x of p99 with 1. The server is pinned to one CPU and the
workers to another (printed); with one CPU, everything shares it.

Server placements (``--placement``, several measured in one run, each against its own
1-client baseline): ``serve --workers 1`` pinned apart from the clients (``1:split``),
``serve --workers 2`` unpinned (``2:free``: one reactor per CPU, sharing the CPUs with
the clients), and ``serve --workers 1`` unpinned (``1:free``).

    python3 bench/scale.py [--devices 256] [--workers 2] [--reads 4000] [--rounds 3]
                           [--placement 1:split,2:free,1:free]
"""

from __future__ import annotations

import argparse
import array
import contextlib
import multiprocessing as mp
import multiprocessing.connection
import os
import resource
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import svgplot

RTCDR = 0x000

_HEADER = """/dts-v1/;
/ {
	model = "platpass scale bench";
	compatible = "platpass,scale-bench";
	#address-cells = <2>;
	#size-cells = <2>;
	interrupt-parent = <&gic>;

	gic: interrupt-controller@8000000 {
		compatible = "arm,gic-v3";
		#interrupt-cells = <3>;
		#address-cells = <2>;
		#size-cells = <2>;
		interrupt-controller;
		reg = <0x0 0x08000000 0x0 0x10000>, <0x0 0x080a0000 0x0 0xf60000>;
	};

	apb_pclk: clock-apb {
		compatible = "fixed-clock";
		#clock-cells = <0>;
		clock-frequency = <100000000>;
		clock-output-names = "apb_pclk";
	};

	rtcclk: clock-rtc {
		compatible = "fixed-clock";
		#clock-cells = <0>;
		clock-frequency = <1>;
		clock-output-names = "clk1hz";
	};

	soc@10000000 {
		compatible = "simple-bus";
		#address-cells = <1>;
		#size-cells = <1>;
		ranges = <0x0 0x0 0x10000000 0x01000000>;
"""


def generate_dts(count: int) -> str:
    """``count`` PL031s, one 4 KiB page and one level SPI each."""
    nodes = []
    for i in range(count):
        nodes.append(f"""
		rtc@{i * 0x1000:x} {{
			compatible = "arm,pl031";
			reg = <{i * 0x1000:#x} 0x1000>;
			interrupts = <0 {32 + i} 4>;
			clocks = <&rtcclk>, <&apb_pclk>;
			clock-names = "clk1hz", "apb_pclk";
		}};""")
    return _HEADER + "".join(nodes) + "\n\t};\n};\n"


# ---------------------------------------------------------------- workers

def _cpu_ns(pid: int | str = "self") -> int:
    """Nanoseconds ``pid`` has run on a CPU (first field of /proc/PID/schedstat)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def _worker(paths: list[str], cpu: int | None, conn: mp.connection.Connection) -> None:
    """Connect to every path, then run the commands the parent sends."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    from platpass.vfio_user.client import VfioUserClient

    clients = [VfioUserClient.connect(p) for p in paths]
    reads = [c.read for c in clients]
    conn.send("connected")
    clock = time.perf_counter_ns
    while True:
        command = conn.recv()
        if command is None:
            break
        mode, count = command
        active = reads[:1] if mode == "one" else reads
        n = len(active)
        samples = array.array("q", bytes(8 * count))
        for i in range(min(count, 200)):  # warm up this pattern
            active[i % n](0, RTCDR, 4)
        cpu0 = _cpu_ns()
        for i in range(count):
            read = active[i % n]
            t0 = clock()
            read(0, RTCDR, 4)
            samples[i] = clock() - t0
        conn.send_bytes(samples.tobytes())
        conn.send(_cpu_ns() - cpu0)
    for client in clients:
        client.close()


def server_handling(dts: Path, count: int, requests: int) -> dict[str, float]:
    """The server's own cost per request, without scheduling: one process holds the
    real VfioUserServer and one end of a socketpair per device; a request is sent, one
    reactor pass is timed (thread CPU time), the reply is read. Rotating over ``count``
    connections against staying on one shows what the number of connections costs the
    server's code."""
    import socket
    import struct

    from platpass.drivers.registry import default_registry
    from platpass.firmware.devicetree import load_dts
    from platpass.host.simulated.board import open_sim_backend
    from platpass.reactor import EpollReactor
    from platpass.vfio_device.device import VfioDevice
    from platpass.vfio_user.protocol.header import Command
    from platpass.vfio_user.server import DeviceEndpoint, SocketOptions, VfioUserServer

    reactor = EpollReactor()
    server = VfioUserServer(reactor)
    ends: list[socket.socket] = []
    version = b'{"capabilities":{}}\0'
    rtcs = [n for n in load_dts(dts).devices() if "arm,pl031" in n.compatible]
    for i, node in enumerate(rtcs[:count]):
        driver = default_registry().match(node.compatible)
        assert driver is not None
        device = VfioDevice(node, driver(node), open_sim_backend(node, reactor), reactor)
        device.open()
        endpoint = DeviceEndpoint(server, f"d{i}", device, socket.socket(socket.AF_UNIX),
                                  None, SocketOptions(), server.limits)
        ours, theirs = socket.socketpair()
        endpoint.adopt(ours)
        theirs.send(struct.pack("=HHIIIHH", 1, 1, 20 + len(version), 0, 0, 0, 1) + version)
        reactor.run_once(0)
        header = theirs.recv(4096)
        assert struct.unpack_from("=HHIII", header)[3:] == (1, 0), "VERSION refused"
        ends.append(theirs)
    request = struct.pack("=HHIIIQII", 2, Command.REGION_READ, 32, 0, 0, RTCDR, 0, 4)
    reply = bytearray(64)
    clock = time.thread_time_ns  # CPU time: other processes preempting us do not count
    results: dict[str, float] = {"one": 0.0, "all": 0.0}
    for name, n in (("one", 1), ("all", len(ends))) * 2:
        spent = 0
        for i in range(requests):
            end = ends[i % n]
            end.send(request)
            t0 = clock()
            reactor.run_once(0)
            spent += clock() - t0
            if end.recv_into(reply) != 36 or reply[12:16] != bytes(4):
                raise SystemExit(f"in-process REGION_READ failed: {bytes(reply).hex()}")
        results[name] += spent / requests / 2000  # two passes each, ns -> us
    return results


def _percentile(sorted_samples: array.array, q: float) -> float:
    return sorted_samples[min(len(sorted_samples) - 1, int(len(sorted_samples) * q))] / 1000


def _summary(samples: list[int]) -> tuple[float, float, float, int]:
    """(p50, p90, p99) in microseconds and the sample count."""
    ordered = array.array("q", sorted(samples))
    return (_percentile(ordered, 0.50), _percentile(ordered, 0.90),
            _percentile(ordered, 0.99), len(ordered))


def _start_server(dts: Path, socket_dir: Path, cpu: int | None,
                  server_workers: int = 1) -> subprocess.Popen[bytes]:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 256 listeners + 256 clients
    command = [sys.executable, "-m", "platpass", "serve", "--dts", str(dts),
               "--backend", "sim", "--socket-dir", str(socket_dir),
               "--workers", str(server_workers)]
    if cpu is not None:
        command = ["taskset", "-c", str(cpu), *command]
    # stderr goes to a file: a pipe nobody reads would block a server that logs a lot.
    errors = (socket_dir.parent / "serve.stderr").open("w+")
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors)
    assert proc.stdout is not None
    # Raw reads: select() on a buffered reader misses lines already in its buffer.
    fd = proc.stdout.fileno()
    output = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            errors.seek(0)
            raise SystemExit(f"platpass serve exited: {errors.read()[-2000:]}")
        output += chunk
        if b"\nready" in b"\n" + output:
            time.sleep(1.0 if server_workers > 1 else 0)  # the workers open their devices
            return proc
    proc.kill()
    errors.seek(0)
    raise SystemExit(f"platpass serve did not get ready in 120 s: {errors.read()[-2000:]}")


def _threads_cpu_ns(pid: int | str) -> int:
    """CPU time of every thread of ``pid`` (/proc/PID/schedstat counts only its first: a
    server's clients on threads of their own run in the others)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            total += _cpu_ns(f"{pid}/task/{tid}")
    return total


def _server_cpu_ns(pid: int) -> int:
    """CPU time of the server: the process and (``--workers``) its worker children, every
    thread of each."""
    total = _threads_cpu_ns(pid)
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    for child in children:
        with contextlib.suppress(OSError):
            total += _threads_cpu_ns(child)
    return total


def _placement(pid: int) -> str:
    return ",".join(str(c) for c in sorted(os.sched_getaffinity(pid)))


def measure(args: argparse.Namespace, dts: Path, tmp: Path, server_workers: int,
            placement: str) -> dict:
    """One server placement: start ``serve --workers server_workers``, connect, alternate
    the three phases ``args.rounds`` times; the samples and CPU figures."""
    cpus = sorted(os.sched_getaffinity(0))
    if placement == "free":
        server_cpu, client_cpu = None, None
    elif placement == "same" or len(cpus) == 1:
        server_cpu = client_cpu = cpus[0]
    else:
        server_cpu, client_cpu = cpus[0], cpus[1]
    ctx = mp.get_context("fork")
    socket_dir = tmp / f"sockets-{server_workers}-{placement}"
    t0 = time.monotonic()
    server = _start_server(dts, socket_dir, server_cpu, server_workers)
    startup = time.monotonic() - t0
    paths = sorted(str(p) for p in socket_dir.glob("*.sock"))
    if len(paths) != args.devices:
        raise SystemExit(f"expected {args.devices} sockets, found {len(paths)}")
    per = args.devices // args.workers
    workers = []
    one: list[int] = []
    few: list[int] = []
    many: list[int] = []
    #: phase -> [server CPU ns, client CPU ns]
    cpu = {"one": [0, 0], "few": [0, 0], "many": [0, 0]}
    try:
        for w in range(args.workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker,
                               args=(paths[w * per:(w + 1) * per], client_cpu, child),
                               daemon=True)
            proc.start()
            workers.append((proc, parent))
        for _proc, pipe in workers:
            if not pipe.poll(60) or pipe.recv() != "connected":
                raise SystemExit("a worker did not connect")
        profiler = None

        def run_phase(name: str, mode: str, chosen: list, into: list[int]) -> None:
            start = _server_cpu_ns(server.pid)
            for _proc, pipe in chosen:
                pipe.send((mode, args.reads))
            for _proc, pipe in chosen:
                into.extend(array.array("q", pipe.recv_bytes()))
                cpu[name][1] += pipe.recv()
            cpu[name][0] += _server_cpu_ns(server.pid) - start

        for round_ in range(args.rounds):
            run_phase("one", "one", workers[:1], one)
            run_phase("few", "one", workers, few)
            if args.profile and round_ == args.rounds - 1 and server_workers == 1:
                profiler = subprocess.Popen(
                    ["py-spy", "record", "-p", str(server.pid), "-o", args.profile,
                     "-r", "500", "--nonblocking"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1)
            run_phase("many", "all", workers, many)
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)
                profiler.wait(30)
        for _proc, pipe in workers:
            pipe.send(None)
        placement_server = _placement(server.pid)
        placement_workers = _placement(workers[0][0].pid)
    finally:
        for proc, _pipe in workers:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    return {"one": one, "few": few, "many": many, "cpu": cpu, "startup": startup,
            "server_cpu": server_cpu, "placement_server": placement_server,
            "placement_workers": placement_workers}


def _placements(text: str) -> list[tuple[int, str]]:
    out = []
    for item in text.split(","):
        count, _, where = item.partition(":")
        if where not in ("split", "same", "free") or not count.isdigit() or int(count) < 1:
            raise argparse.ArgumentTypeError(f"{item!r}: give WORKERS:split|same|free")
        out.append((int(count), where))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--devices", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2,
                        help="client processes sharing the devices (default 2)")
    parser.add_argument("--reads", type=int, default=4000,
                        help="reads per worker per chunk (default 4000)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternations of the two phases (default 3)")
    parser.add_argument("--placement", type=_placements, default=None,
                        help="server placements measured in this run, comma-separated "
                             "SERVER_WORKERS:WHERE, WHERE split (server on one CPU, clients "
                             "on another), same (all on one CPU) or free (unpinned); "
                             "default 1:split,2:free,1:free (serve --workers 2 "
                             "pinned to one CPU would only share it)")
    parser.add_argument("--profile", metavar="SVG",
                        help="record the server with py-spy during the 256-client phase "
                             "(single-process placements)")
    parser.add_argument("--plot", metavar="FILE.svg",
                        help="also draw the latency CDFs: N active clients and the control "
                             "against 1 active client (the baseline), and the p50/p99 bars "
                             "(first placement)")
    args = parser.parse_args()
    if args.devices % args.workers:
        parser.error("--devices must be a multiple of --workers")
    placements = args.placement or [(1, "split"), (2, "free"), (1, "free")]

    cpus = sorted(os.sched_getaffinity(0))
    results = []
    with tempfile.TemporaryDirectory(prefix="platpass-scale-") as tmp:
        dts = Path(tmp) / "scale.dts"
        dts.write_text(generate_dts(args.devices))
        for server_workers, where in placements:
            results.append(((server_workers, where),
                            measure(args, dts, Path(tmp), server_workers, where)))
        first_cpu = results[0][1]["server_cpu"]
        if first_cpu is not None:
            os.sched_setaffinity(0, {first_cpu})
        handling = server_handling(dts, args.devices, 10000)

    print(f"platpass serve: {args.devices} simulated PL031s; trapped 4-byte REGION_READ "
          f"of RTCDR; {args.workers} client processes; {len(cpus)} CPUs available; load "
          f"average {os.getloadavg()[0]:.1f} (other processes show in the p99)")
    for (server_workers, where), r in results:
        one, few, many, cpu = r["one"], r["few"], r["many"], r["cpu"]
        p50_1, p90_1, p99_1, n_1 = _summary(one)
        p50_w, p90_w, p99_w, n_w = _summary(few)
        p50_n, p90_n, p99_n, n_n = _summary(many)
        print()
        print(f"== placement: serve --workers {server_workers}, {where} (server on CPU "
              f"{r['placement_server']}, clients on CPU {r['placement_workers']}; started "
              f"in {r['startup']:.1f} s)")

        def per_read(name: str, n: int, cpu: dict = cpu) -> str:
            return f"{cpu[name][0] / n / 1000:7.1f}us {cpu[name][1] / n / 1000:7.1f}us"

        print(f"{'':32} {'p50':>9} {'p90':>9} {'p99':>9} {'samples':>8}   CPU per read: "
              "server, client")
        print(f"{'1 active client (baseline)':32} {p50_1:7.1f}us {p90_1:7.1f}us "
              f"{p99_1:7.1f}us {n_1:8d}   {per_read('one', n_1)}")
        print(f"{f'{args.devices} active clients':32} {p50_n:7.1f}us {p90_n:7.1f}us "
              f"{p99_n:7.1f}us {n_n:8d}   {per_read('many', n_n)}")
        print(f"{f'control: {args.workers} active clients':32} {p50_w:7.1f}us "
              f"{p90_w:7.1f}us {p99_w:7.1f}us {n_w:8d}   {per_read('few', n_w)}")
        ratio = p99_n / p99_1
        print(f"ratio p99 {args.devices}/1: {ratio:.2f}x (p50 {p50_n / p50_1:.2f}x); "
              f"target <= 2x: {'met' if ratio <= 2 else 'MISSED'}")
        print(f"  of which the number of clients ({args.devices} vs {args.workers} at the "
              f"same concurrency): p99 {p99_n / p99_w:.2f}x, p50 {p50_n / p50_w:.2f}x")
    print()
    print(f"server code per request, in-process (no scheduling): "
          f"{handling['one']:.1f}us on 1 connection, {handling['all']:.1f}us rotating over "
          f"{args.devices} ({handling['all'] / handling['one']:.2f}x)")
    if args.plot:
        (server_workers, where), r = results[0]
        one, few, many = r["one"], r["few"], r["many"]
        ratio = _summary(many)[2] / _summary(one)[2]
        labels = ("1 active client (baseline)", f"control: {args.workers} active clients",
                  f"{args.devices} active clients")
        series = (one, few, many)
        us = {label: [v / 1000 for v in samples] for label, samples in zip(labels, series,
                                                                           strict=True)}
        panels = [svgplot.cdf(f"Trapped read, {args.devices} connections "
                              f"(p99 ratio {ratio:.2f}x)", us),
                  svgplot.bars("p50 and p99 (µs)", ["p50", "p99"],
                               {label: [_summary(samples)[0], _summary(samples)[2]]
                                for label, samples in zip(labels, series, strict=True)},
                               "µs")]
        svgplot.write(args.plot, f"bench/scale.py: serve --workers {server_workers}, "
                      f"{where}, many clients", panels,
                      note=f"python3 bench/scale.py --devices {args.devices} --reads "
                           f"{args.reads} --rounds {args.rounds} --placement "
                           f"{server_workers}:{where} --plot FILE.svg")
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
