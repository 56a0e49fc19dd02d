"""Capacity of step 2's scheduler: the one-sided MPI counter that hands out batches.

    mpirun -n R python benchmarks/bench_scheduler.py [--tickets 200000]
    python benchmarks/bench_scheduler.py [--ranks 1,2,4] [--fit-seconds 0.000333]

``run_fits`` (mlmotex_hpc/parallel/fitting.py) hands one batch to whichever rank asks
next: every rank calls ``mpi4py.util.sync.Counter.next()`` (a ``Fetch_and_op`` under a
shared passive-target lock on rank 0's window) and fits the batch whose number it got.
Under ``mpirun`` this script measures that counter:

1. idle target: every rank, rank 0 included, calls ``next()`` in a tight loop until
   ``--tickets`` tickets have been handed out. Reported: the served rate (tickets per
   second, all ranks together) and the mean latency of one ``next()`` per rank.
2. busy target: rank 0 computes (NumPy, no MPI call) for ``--busy-seconds`` while the
   other ranks call ``next()`` for half that time. A passive-target counter must serve
   them without rank 0's attention: the check is that every other rank got its tickets
   and finished before rank 0 entered MPI again (one node: the ranks share one clock).

Run without ``mpirun``, it launches itself under ``mpirun -n 1``, ``-n 2`` and
``-n 4 --oversubscribe``, prints a table and the smallest power-of-two batch size b for
which, at ``--target-ranks`` ranks (256) and ``--fit-seconds`` per motif fit, the
scheduling overhead L / (b * T_fit) stays under 1 % and the demand R / (b * T_fit)
tickets/s under half the counter's measured capacity C.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time

MARK = "BENCH_SCHEDULER_RESULT "
LAUNCHER_ENV = ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE", "MPI_LOCALNRANKS")
INTER_NODE_LATENCY = (1e-6, 5e-6)  # usual RMA atomic round trip across a fast network


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tickets", type=int, default=200_000,
                   help="tickets handed out in the idle-target test (default 200000)")
    p.add_argument("--repeats", type=int, default=3,
                   help="idle-target repeats; the median by rate is reported (default 3)")
    p.add_argument("--busy-seconds", type=float, default=1.0,
                   help="how long rank 0 computes in the busy-target test (default 1.0)")
    p.add_argument("--ranks", default="1,2,4",
                   help="rank counts to launch when run without mpirun (default 1,2,4)")
    p.add_argument("--fit-seconds", type=float, default=1 / 3000,
                   help="time per motif fit per core (default 1/3000 s: Debye Keggin)")
    p.add_argument("--target-ranks", type=int, default=256,
                   help="rank count of the recommendation (default 256)")
    p.add_argument("--mpirun", default=shutil.which("mpirun") or "mpirun",
                   help="the mpirun to launch (default: the one on PATH)")
    p.add_argument("--mpirun-args", default="--bind-to none",
                   help="extra mpirun arguments (default '--bind-to none', as the Makefile)")
    p.add_argument("--json", action="store_true",
                   help="(under mpirun) print the result as one JSON line for the launcher")
    return p.parse_args(argv)


def under_launcher() -> bool:
    return any(name in os.environ for name in LAUNCHER_ENV)


# --------------------------------------------------------------------------- MPI side

def busy_compute(seconds: float) -> int:
    """NumPy work that never calls MPI (stands in for a numba fit); returns passes."""
    import numpy as np

    x = np.linspace(0.0, 1.0, 4096)
    passes = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        x = np.sin(x) * 0.5 + np.cos(x) * 0.5
        passes += 1
    return passes


def idle_target(comm, counter_cls, tickets: int) -> dict:
    """Every rank takes tickets until ``tickets`` are gone, as run_fits does."""
    counter = counter_cls(comm=comm)
    for _ in range(200):  # warm-up on a counter of its own
        counter.next()
    counter.free()
    counter = counter_cls(comm=comm)
    comm.Barrier()
    calls = 0
    cpu = time.process_time()
    start = time.perf_counter()
    while counter.next() < tickets:
        calls += 1
    calls += 1  # the last call, which found the counter past the end, costs the same
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    comm.Barrier()
    counter.free()
    rows = comm.gather((calls, elapsed, cpu), root=0)
    if comm.rank != 0:
        return {}
    total = sum(r[0] for r in rows)
    wall = max(r[1] for r in rows)
    latencies = [e / c for c, e, _ in rows]
    return {
        "served": total,
        "wall": wall,
        "rate": total / wall,
        "latency_mean": statistics.fmean(latencies),
        "latency_max_rank": max(latencies),
        "cpu_per_call": statistics.fmean(t / c for c, _, t in rows),
    }


def busy_target(comm, counter_cls, busy_seconds: float) -> dict:
    """Rank 0 computes without MPI; the others take tickets meanwhile."""
    if comm.size == 1:
        return {}
    counter = counter_cls(comm=comm)
    comm.Barrier()
    if comm.rank == 0:
        t0 = time.perf_counter()
        busy_compute(busy_seconds)
        t1 = time.perf_counter()
        row = (0, 0.0, 0.0, t0, t1)
    else:
        window = 0.5 * busy_seconds
        calls, worst = 0, 0.0
        t0 = time.perf_counter()
        now = t0
        while now - t0 < window:
            before = time.perf_counter()
            counter.next()
            now = time.perf_counter()
            worst = max(worst, now - before)
            calls += 1
        row = (calls, now - t0, worst, t0, now)
    rows = comm.gather(row, root=0)
    comm.Barrier()
    counter.free()
    if comm.rank != 0:
        return {}
    busy_end = rows[0][4]
    others = rows[1:]
    served = sum(r[0] for r in others)
    return {
        "served": served,
        "rate": served / max(r[1] for r in others),
        "latency_mean": statistics.fmean(r[1] / r[0] for r in others),
        "latency_max": max(r[2] for r in others),
        "passive": all(r[4] < busy_end for r in others),
    }


def mpi_main(args: argparse.Namespace) -> None:
    from mpi4py import MPI
    from mpi4py.util.sync import Counter

    comm = MPI.COMM_WORLD
    runs = [idle_target(comm, Counter, args.tickets) for _ in range(max(1, args.repeats))]
    busy = busy_target(comm, Counter, args.busy_seconds)
    if comm.rank != 0:
        return
    runs.sort(key=lambda r: r["rate"])
    idle = runs[len(runs) // 2]
    library = MPI.Get_library_version().split("\n")[0].strip()
    result = {"ranks": comm.size, "idle": idle, "busy": busy,
              "rates": [r["rate"] for r in runs], "mpi": library}
    if args.json:
        print(MARK + json.dumps(result), flush=True)
        return
    print(f"{comm.size} rank(s), {result['mpi']}")
    print(f"  idle target: {idle['served']:,} tickets in {idle['wall']:.3f} s = "
          f"{idle['rate']:,.0f} tickets/s; mean next() latency {idle['latency_mean'] * 1e6:.2f} µs "
          f"(slowest rank {idle['latency_max_rank'] * 1e6:.2f} µs, CPU per call "
          f"{idle['cpu_per_call'] * 1e6:.2f} µs); median of {len(runs)}")
    if busy:
        print(f"  busy target: {busy['served']:,} tickets while rank 0 computed; mean latency "
              f"{busy['latency_mean'] * 1e6:.2f} µs, max {busy['latency_max'] * 1e6:.1f} µs; "
              f"served without rank 0: {'yes' if busy['passive'] else 'NO'}")
    else:
        print("  busy target: needs 2 ranks or more")


# --------------------------------------------------------------------------- launcher

def launch(args: argparse.Namespace, ranks: int) -> dict:
    env = dict(os.environ)
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    cmd = [args.mpirun, "-n", str(ranks), *shlex.split(args.mpirun_args)]
    if ranks > (os.cpu_count() or 1):
        cmd.append("--oversubscribe")
    cmd += [sys.executable, os.path.abspath(__file__), "--json",
            "--tickets", str(args.tickets), "--repeats", str(args.repeats),
            "--busy-seconds", str(args.busy_seconds)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    sys.exit(f"{shlex.join(cmd)} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")


def recommend(latency: float, capacity: float, fit_seconds: float, ranks: int) -> int | None:
    for k in range(21):
        b = 2**k
        if latency / (b * fit_seconds) < 0.01 and ranks / (b * fit_seconds) < 0.5 * capacity:
            return b
    return None


def launcher_main(args: argparse.Namespace) -> None:
    counts = [int(n) for n in args.ranks.split(",")]
    cores = os.cpu_count() or 1
    print(f"Scheduler: mpi4py.util.sync.Counter, {args.tickets:,} tickets per idle-target "
          f"test (median of {args.repeats} by rate; all repeats in brackets), {cores} cores "
          "on this node")
    print("| ranks | served tickets/s | mean next() latency (CPU per call), idle target | "
          "mean / max latency, rank 0 busy | served while rank 0 busy |")
    print("|---|---|---|---|---|")
    results = []
    for n in counts:
        r = launch(args, n)
        results.append(r)
        idle, busy = r["idle"], r["busy"]
        rates = ", ".join(f"{x:,.0f}" for x in r["rates"])
        busy_cell = (f"{busy['latency_mean'] * 1e6:.2f} / {busy['latency_max'] * 1e6:,.0f} µs"
                     if busy else "—")
        passive = ("yes" if busy["passive"] else "NO") if busy else "—"
        over = " (oversubscribed)" if n > cores else ""
        print(f"| {n}{over} | {idle['rate']:,.0f} ({rates}) | {idle['latency_mean'] * 1e6:.2f} µs "
              f"({idle['cpu_per_call'] * 1e6:.2f} µs) | {busy_cell} | {passive} |", flush=True)
    print(f"MPI: {results[0]['mpi']}")

    # L: the largest mean latency among the runs that had a core per busy process
    # (idle test: ranks <= cores; busy test: the other ranks <= cores - 1). Where ranks
    # outnumber cores, a call's wall time includes waiting for a core, not the counter.
    top = max(results, key=lambda r: r["ranks"])
    capacity = top["idle"]["rate"]
    candidates = [(r["idle"]["latency_mean"], f"{r['ranks']} rank(s), idle target")
                  for r in results if r["ranks"] <= cores]
    candidates += [(r["busy"]["latency_mean"], f"{r['ranks']} ranks, rank 0 busy")
                   for r in results if r["busy"] and r["ranks"] - 1 <= cores - 1]
    if not candidates:
        candidates = [(r["idle"]["latency_mean"], f"{r['ranks']} ranks, idle target")
                      for r in results]
    latency, source = max(candidates)
    t_fit, big_r = args.fit_seconds, args.target_ranks
    b = recommend(latency, capacity, t_fit, big_r)
    print()
    print(f"Model: T_fit = {t_fit * 1e6:.0f} µs per fit; L = {latency * 1e6:.2f} µs (largest mean "
          f"latency without oversubscription: {source}); C = {capacity:,.0f} tickets/s (served "
          f"rate at {top['ranks']} ranks).")
    print(f"  overhead per rank = L / (b T_fit) < 1 %; demand at {big_r} ranks = "
          f"{big_r} / (b T_fit) tickets/s < C/2 = {capacity / 2:,.0f}/s")
    for k in range(0, 9):
        bb = 2**k
        demand = big_r / (bb * t_fit)
        print(f"  b = {bb:3d}: overhead {100 * latency / (bb * t_fit):7.3f} %, demand "
              f"{demand:9,.0f} tickets/s = {100 * demand / capacity:5.1f} % of C")
    if b is None:
        print("No batch size up to 2**20 meets both conditions.")
    else:
        print(f"Recommended catalogue.batch_size at {big_r} ranks: b >= {b}")
    lo, hi = INTER_NODE_LATENCY
    print(f"Caution: the {big_r}-rank figure is an extrapolation from <= {top['ranks']} ranks "
          f"on one {cores}-core node (shared memory). On a cluster the counter lives in "
          f"rank 0's memory across the network; an RMA atomic typically takes "
          f"{lo * 1e6:.0f}-{hi * 1e6:.0f} µs there (context, not measured here), which alone "
          f"needs b >= {recommend(hi, float('inf'), t_fit, big_r)} for the 1 % bound; the "
          "capacity is then the rate of rank 0's network interface, not measured here either.")


def main(argv=None) -> None:
    args = parse_args(argv)
    if under_launcher():
        mpi_main(args)
    else:
        launcher_main(args)


if __name__ == "__main__":
    main()
