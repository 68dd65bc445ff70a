"""A real single-node SLURM cluster for tests: munged + slurmctld + slurmd started by hand.

Facts (FIELD_NOTES): no systemd here, so each daemon is started directly and writes a pid file;
only the daemons started here are stopped, by those pids. Clients find the cluster through
SLURM_CONF, which jobs inherit (sbatch exports the environment by default).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


class SlurmUnavailable(RuntimeError):
    pass


ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL",
         "DEADLINE"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


class SlurmCluster:
    """``nodes`` > 1: that many slurmd daemons on this machine (``slurmd -N``), each a node with
    ``CPUs / nodes`` cores, all reached at 127.0.0.1; jobs need ``MASTER_ADDR=127.0.0.1`` (the node
    names resolve nowhere). ``first_job_id``: Lightning derives the master port from the job id, so
    two clusters on one machine must not share ids."""

    def __init__(self, root: Path, nodes: int = 1, first_job_id: int = 1) -> None:
        self.root = Path(root)
        self.nodes = nodes
        self.first_job_id = first_job_id
        self.conf = self.root / "slurm.conf"
        self.pids: dict[str, Path] = {}
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))

    def start(self) -> "SlurmCluster":
        for tool in ("slurmctld", "slurmd", "munged", "sbatch", "scontrol"):
            if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
                raise SlurmUnavailable(f"{tool} is not installed (apt-get install slurm-wlm munge)")
        if os.geteuid() != 0:
            raise SlurmUnavailable("starting slurm daemons needs root")
        self._start_munge()
        host = socket.gethostname().split(".")[0]
        mem = int(open("/proc/meminfo").read().split()[1]) // 1024
        for d in ("state", "spool", "log"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        if self.nodes == 1:
            names = [host]
            node_lines = (f"NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} "
                          f"RealMemory={max(1000, mem - 2000)} State=UNKNOWN")
        else:
            names = [f"mt-n{i + 1}" for i in range(self.nodes)]
            cpus = max(1, (os.cpu_count() or 1) // self.nodes)
            node_lines = "\n".join(f"NodeName={n} NodeHostname={host} NodeAddr=127.0.0.1 Port={_free_port()} "
                                   f"CPUs={cpus} RealMemory={max(1000, (mem - 2000) // self.nodes)} State=UNKNOWN"
                                   for n in names)
        self.node_names = names
        self.conf.write_text(f"""ClusterName=midtrain-test
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
StateSaveLocation={self.root}/state
SlurmdSpoolDir={self.root}/spool/%n
SlurmctldPidFile={self.root}/slurmctld.pid
SlurmdPidFile={self.root}/slurmd-%n.pid
SlurmctldLogFile={self.root}/log/slurmctld.log
SlurmdLogFile={self.root}/log/slurmd-%n.log
FirstJobId={self.first_job_id}
{node_lines}
PartitionName=debug Nodes={",".join(names)} Default=YES MaxTime=INFINITE State=UP
""")
        self._daemon("slurmctld", ["/usr/sbin/slurmctld", "-f", str(self.conf)], self.root / "slurmctld.pid")
        for name in names:
            self._daemon(f"slurmd-{name}", ["/usr/sbin/slurmd", "-f", str(self.conf), "-N", name],
                         self.root / f"slurmd-{name}.pid")
        deadline = time.time() + 60
        while time.time() < deadline:
            r = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True, env=self.env)
            states = r.stdout.split()
            if r.returncode == 0 and len(states) == len(names) and set(states) <= {"idle", "mix", "alloc"}:
                return self
            time.sleep(1)
        self.stop()
        raise SlurmUnavailable(f"the node never became idle: {self.logs()}")

    def _start_munge(self) -> None:
        """Use a running munged, or start one. Test clusters on one machine (pytest-xdist workers) share it:
        each registers under /run/munge/midtrain-users/; the last one to stop stops the munged it started."""
        import fcntl

        run_dir = Path("/run/munge")
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(run_dir, "munge", "munge")
        users = run_dir / "midtrain-users"
        users.mkdir(exist_ok=True)
        with open(run_dir / "midtrain-start.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            (users / str(os.getpid())).write_text(str(self.root))
            self._munge_user = users / str(os.getpid())
            if _alive(_pid(run_dir / "munged.pid")):
                if (users / "started-by").exists():
                    self.pids["munged"] = run_dir / "munged.pid"  # ours (a test cluster's): stopped by the last user
                return  # someone else's munged: use it, never stop it
            if not Path("/etc/munge/munge.key").exists():
                subprocess.run(["/usr/sbin/mungekey", "--create"], check=True)
                shutil.chown("/etc/munge/munge.key", "munge", "munge")
            self._daemon("munged", ["runuser", "-u", "munge", "--", "/usr/sbin/munged"], run_dir / "munged.pid")
            (users / "started-by").write_text(str(os.getpid()))

    def _release_munge(self) -> bool:
        """Unregister; True when no other live test process still uses munged (then it may be stopped)."""
        import fcntl

        user = getattr(self, "_munge_user", None)
        if user is None:
            return True
        users = user.parent
        with open(users.parent / "midtrain-start.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            user.unlink(missing_ok=True)
            self._munge_user = None
            others = [p for p in users.iterdir() if p.name.isdigit() and _alive(int(p.name)) and int(p.name) != os.getpid()]
            if others:
                return False
            (users / "started-by").unlink(missing_ok=True)
            return True

    def _daemon(self, name: str, cmd: list[str], pid_file: Path) -> None:
        r = subprocess.run(cmd, capture_output=True, text=True, env=self.env)
        if r.returncode != 0:
            self.stop()
            raise SlurmUnavailable(f"{name} failed to start: {r.stderr.strip()} {self.logs()}")
        deadline = time.time() + 20
        while not _alive(_pid(pid_file)):
            if time.time() > deadline:
                self.stop()
                raise SlurmUnavailable(f"{name} wrote no pid file {pid_file}: {self.logs()}")
            time.sleep(0.2)
        self.pids[name] = pid_file

    def logs(self) -> str:
        out = []
        for f in sorted((self.root / "log").glob("*.log")):
            out.append(f"--- {f.name}\n" + "\n".join(f.read_text().splitlines()[-15:]))
        return "\n".join(out)

    def stop(self) -> None:
        names = [n for n in self.pids if n.startswith("slurmd")] + ["slurmctld"]
        if self._release_munge():
            names.append("munged")
        for name in names:
            pid = _pid(self.pids[name]) if name in self.pids else None
            if _alive(pid):
                os.kill(pid, signal.SIGTERM)
                for _ in range(50):
                    if not _alive(pid):
                        break
                    time.sleep(0.1)
        self.pids.clear()

    # ---- client helpers ----
    def run(self, *cmd, check=True, **kw) -> subprocess.CompletedProcess:
        r = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, env=kw.pop("env", self.env), **kw)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(map(str, cmd))} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
        return r

    def job_state(self, job_id: str) -> str:
        r = self.run("scontrol", "show", "job", job_id, check=False)
        for tok in r.stdout.split():
            if tok.startswith("JobState="):
                return tok.split("=", 1)[1]
        return "UNKNOWN"

    def release_requeued(self, job_id: str) -> None:
        """Start a requeued (PENDING) job now instead of after SLURM's requeue delay (~120 s, the credential
        lifetime). slurmd revokes the job's credentials with a one-second resolution: a start within the
        second of the requeue is killed ("Job credential revoked", job FAILED; seen under CI load), so the
        begin time is moved only once two seconds have passed."""
        time.sleep(2.0)
        self.run("scontrol", "update", f"JobId={job_id}", "StartTime=now", check=False)

    def sbatch(self, *args, env=None, cwd=None, wait=True, timeout=600) -> subprocess.CompletedProcess:
        """``sbatch --parsable ARGS``; with ``wait``, poll (0.3 s) until every task of the job has ended and
        return its exit code (``sbatch --wait`` notices an end 2-40 s late). stdout: the job id."""
        r = self.run("sbatch", "--parsable", *args, env=env or self.env, cwd=cwd, check=False, timeout=60)
        if r.returncode != 0 or not wait:
            return r
        job = r.stdout.strip().split(";")[0]
        deadline = time.time() + timeout
        while True:
            shown = self.run("scontrol", "show", "job", job, check=False).stdout
            states = [t.split("=", 1)[1] for t in shown.split() if t.startswith("JobState=")]
            codes = [t.split("=", 1)[1] for t in shown.split() if t.startswith("ExitCode=")]
            if states and all(st in ENDED for st in states):
                def code(text: str) -> int:  # ExitCode=status:signal
                    status, sig = (int(x) for x in text.split(":"))
                    return status or (128 + sig if sig else 0)

                rc = 0 if all(st == "COMPLETED" for st in states) else max([code(c) for c in codes] + [1])
                return subprocess.CompletedProcess(r.args, rc, r.stdout, r.stderr)
            if time.time() > deadline:
                raise subprocess.TimeoutExpired(r.args, timeout)
            time.sleep(0.3)
