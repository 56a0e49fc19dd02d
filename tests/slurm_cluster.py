"""A private one-node SLURM cluster for the tests of ``jobs/``, in a folder of its own.

Debian's SLURM 22.05 (``slurmctld``, ``slurmd``, ``slurm-client``) and ``munge``, started
as three daemons this module owns: ``munged`` on its own socket and key, ``slurmctld`` and
``slurmd`` on two free TCP ports, every state, spool, log and pid file inside the folder.
So it cannot meet a cluster the machine belongs to: the clients find this one through
``SLURM_CONF`` (:meth:`Cluster.env`), and nothing is written under ``/etc`` or ``/var``.
:meth:`Cluster.stop` ends exactly the processes :meth:`Cluster.start` began, by their
process ids, and the jobs still running on the node with them.

The node is this machine, with its cores and memory, in one partition ``test``. Process
tracking is ``proctrack/linuxproc`` and task binding ``task/none``: no cgroups, which a
container may not offer. ``JobRequeue`` is on, so a job may requeue itself.

Run as root (slurmd starts jobs as their user). ``python -m tests.slurm_cluster DIR``
starts one and keeps it up until Ctrl-C, for trying the job scripts by hand.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

#: The programs the cluster needs, and the Debian packages that hold them.
PROGRAMS = {"munged": "munge", "slurmctld": "slurmctld", "slurmd": "slurmd",
            "sbatch": "slurm-client", "squeue": "slurm-client", "scontrol": "slurm-client"}
PARTITION = "test"


def missing() -> str | None:
    """Why no private cluster can start here, or None."""
    if os.geteuid() != 0:
        return "not root (slurmd must start jobs as their user)"
    lost = [name for name in PROGRAMS if shutil.which(name) is None
            and not Path("/usr/sbin", name).exists()]
    if lost:
        packages = sorted({PROGRAMS[name] for name in lost})
        return (f"{', '.join(lost)} not installed (Debian: apt-get install "
                f"{' '.join(packages)}; make test does it as root)")
    return None


def _program(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_ports(n: int) -> list[int]:
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _memory_mb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024 - 512  # leave some to the system
    return 1024


@dataclass
class Cluster:
    """One private SLURM cluster rooted at ``root`` (see the module notes)."""

    root: Path
    cpus: int = field(default_factory=lambda: os.cpu_count() or 1)
    node: str = field(default_factory=lambda: socket.gethostname().split(".")[0])
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "munge.socket"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment a client (sbatch, squeue, ...) of this cluster runs in."""
        return dict(os.environ, SLURM_CONF=str(self.conf), **extra)

    # ---- starting and stopping ------------------------------------------------------
    def start(self, timeout: float = 60.0) -> Cluster:
        for sub in ("etc", "munge", "state", "spool", "log", "run"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        self._write_munge_key()
        ctl_port, d_port = _free_ports(2)
        self.conf.write_text(self._slurm_conf(ctl_port, d_port))
        try:
            self._start_munged()
            self._spawn("slurmctld", [_program("slurmctld"), "-D", "-c", "-f", str(self.conf)])
            self._spawn("slurmd", [_program("slurmd"), "-D", "-f", str(self.conf),
                                   "-N", self.node])
            self._wait_idle(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """End the jobs, then the daemons this cluster started (by pid), and wait."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            subprocess.run(["scancel", "--full", "--partition", PARTITION],
                           env=self.env(), capture_output=True, timeout=30)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.processes.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self._end_job_processes()

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- using it -------------------------------------------------------------------
    def sbatch(self, *args: str, cwd: Path | None = None, env: dict | None = None) -> int:
        """Submit a job (``sbatch --parsable ARGS``) and return its id."""
        proc = subprocess.run(["sbatch", "--parsable", *args], cwd=cwd, env=self.env(
            **(env or {})), capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"sbatch {' '.join(args)} failed: {proc.stderr.strip()}")
        return int(proc.stdout.strip().split(";")[0])

    def job(self, job_id: int | str) -> dict[str, str]:
        """``scontrol show job``'s fields of a job (the first record: an array's first
        task), or {} once slurmctld has forgotten it."""
        proc = subprocess.run(["scontrol", "-o", "show", "job", str(job_id)],
                              env=self.env(), capture_output=True, text=True, timeout=30)
        if proc.returncode != 0 or not proc.stdout.strip():
            return {}
        first = proc.stdout.strip().splitlines()[0]
        fields = {}
        for item in first.split():
            key, _, value = item.partition("=")
            fields[key] = value
        return fields

    def states(self, job_id: int | str) -> list[str]:
        """The state of every task of a job (one for a plain job)."""
        proc = subprocess.run(["scontrol", "-o", "show", "job", str(job_id)],
                              env=self.env(), capture_output=True, text=True, timeout=30)
        return [part.split("=", 1)[1] for line in proc.stdout.splitlines()
                for part in line.split() if part.startswith("JobState=")]

    def wait(self, job_id: int | str, timeout: float = 600.0,
             done: tuple[str, ...] = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT",
                                      "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                                      "BOOT_FAIL", "DEADLINE")) -> list[str]:
        """Wait until every task of the job has ended; their states."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            states = self.states(job_id)
            if states and all(s in done for s in states):
                return states
            self._check_alive()
            time.sleep(0.5)
        raise TimeoutError(f"job {job_id} not done after {timeout:g} s: "
                           f"{self.states(job_id)}\n{self.logs()}")

    def signal_batch(self, job_id: int | str, sig: str = "USR1") -> None:
        """Send ``sig`` to the job's batch script (``scancel --signal=SIG --batch``)."""
        subprocess.run(["scancel", f"--signal={sig}", "--batch", str(job_id)],
                       env=self.env(), check=True, capture_output=True, timeout=30)

    def cancel(self, job_id: int | str) -> None:
        subprocess.run(["scancel", str(job_id)], env=self.env(), check=True,
                       capture_output=True, timeout=30)

    def logs(self) -> str:
        """The daemons' last log lines, for a failure's message."""
        out = []
        for name in ("slurmctld", "slurmd", "munged"):
            path = self.root / "log" / f"{name}.log"
            if path.exists():
                out.append(f"--- {path} ---\n" + "\n".join(
                    path.read_text(errors="replace").splitlines()[-15:]))
        return "\n".join(out)

    # ---- the parts ------------------------------------------------------------------
    def _write_munge_key(self) -> None:
        key = self.root / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)

    def _start_munged(self) -> None:
        m = self.root / "munge"
        self._spawn("munged", [_program("munged"), "--foreground", "--force",
                               f"--key-file={m / 'munge.key'}",
                               f"--socket={self.munge_socket}",
                               f"--pid-file={m / 'munged.pid'}",
                               f"--log-file={self.root / 'log' / 'munged.log'}",
                               f"--seed-file={m / 'munged.seed'}"])
        end = time.monotonic() + 20
        while not self.munge_socket.exists():
            self._check_alive()
            if time.monotonic() > end:
                raise RuntimeError(f"munged did not open its socket\n{self.logs()}")
            time.sleep(0.1)

    def _spawn(self, name: str, command: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")
        self.processes[name] = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=self.env(), start_new_session=True)
        log.close()

    def _check_alive(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                out = self.root / "log" / f"{name}.out"
                text = out.read_text(errors="replace")[-2000:] if out.exists() else ""
                raise RuntimeError(f"{name} exited ({proc.returncode}): {text}\n"
                                   f"{self.logs()}")

    def _wait_idle(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self._check_alive()
            proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], env=self.env(),
                                  capture_output=True, text=True, timeout=30)
            if proc.returncode == 0 and proc.stdout.strip() in ("idle", "mix", "alloc"):
                return
            time.sleep(0.3)
        raise RuntimeError(f"the node did not come up in {timeout:g} s\n{self.logs()}")

    def _end_job_processes(self) -> None:
        """Anything a job left behind that names this cluster's folder (slurmstepd)."""
        mine = str(self.root)
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                env = Path("/proc", pid, "environ").read_bytes()
            except OSError:
                continue
            if f"SLURM_CONF={self.conf}".encode() in env or mine.encode() in Path(
                    "/proc", pid, "cmdline").read_bytes():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass

    def _slurm_conf(self, ctl_port: int, d_port: int) -> str:
        r = self.root
        return f"""# a private one-node cluster for mlmotex-hpc's tests (tests/slurm_cluster.py)
ClusterName=mlmotex-test
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={ctl_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
CredType=cred/munge
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}
SlurmctldPidFile={r / 'run' / 'slurmctld.pid'}
SlurmdPidFile={r / 'run' / 'slurmd.pid'}
SlurmctldLogFile={r / 'log' / 'slurmctld.log'}
SlurmdLogFile={r / 'log' / 'slurmd.log'}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
JobRequeue=1
ReturnToService=2
MailProg=/bin/true
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
MinJobAge=600
KillWait=5
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={_memory_mb()} State=UNKNOWN
PartitionName={PARTITION} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""


if __name__ == "__main__":  # a cluster to try the job scripts by hand
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "slurm-test").resolve()
    problem = missing()
    if problem:
        sys.exit(f"no private SLURM here: {problem}")
    # Ctrl-C or a TERM ends it, also when started in the background by a script (which
    # starts it with SIGINT ignored)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with Cluster(folder) as cluster:
        print(f"export SLURM_CONF={cluster.conf}   # then sbatch, squeue, ... ; Ctrl-C ends it",
              flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
