"""A real single-node SLURM cluster: install it, start it, run a tiny study through
``--profile workflow/profiles/slurm`` with the real executor plugin, check the
aggregated Parquet, stop the daemons by PID.

Runs when the tests run as root on Debian (as CI does); otherwise it is skipped
with the reason printed.  Facts behind the set-up: ../shared/notes/slurm-local.md.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]


def _skip_reason() -> str | None:
    if os.environ.get("NORMBENCH_SKIP_SLURM"):
        return "NORMBENCH_SKIP_SLURM is set"
    if not Path("/etc/debian_version").exists():
        return "not Debian: the test installs SLURM from Debian packages"
    if os.geteuid() != 0:
        return "not root: installing and starting slurmctld/slurmd/munged needs root"
    if not shutil.which("apt-get"):
        return "no apt-get"
    return None


REASON = _skip_reason()
if REASON:
    print(f"\n[test_slurm] skipped: {REASON}", file=sys.stderr)
pytestmark = [pytest.mark.slow, pytest.mark.skipif(REASON is not None, reason=REASON or "")]


def sh(cmd, **kw):
    p = subprocess.run(cmd, shell=isinstance(cmd, str), capture_output=True, text=True, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return p.stdout


def install():
    if all(shutil.which(b) for b in ("slurmctld", "slurmd", "sinfo", "munged")):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    sh(["apt-get", "update", "-qq"], env=env, timeout=600)
    sh(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES], env=env, timeout=900)


def slurm_conf(state: Path) -> str:
    host = socket.gethostname().split(".")[0]
    mem_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 - 2048
    return f"""ClusterName=normbench
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=300
StateSaveLocation={state}/ctld
SlurmdSpoolDir={state}/d
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd.pid
SlurmctldLogFile={state}/slurmctld.log
SlurmdLogFile={state}/slurmd.log
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={mem_mb} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _kill_pidfile(path: Path):
    try:
        os.kill(int(path.read_text().strip()), signal.SIGTERM)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        pass


@pytest.fixture(scope="module")
def cluster():
    install()
    state = Path(tempfile.mkdtemp(prefix="normbench-slurm-"))
    for d in ("ctld", "d"):
        (state / d).mkdir()
    (state / "slurm.conf").write_text(slurm_conf(state))
    # The jobstep plugin strips SLURM_CONF, so the config must sit at the default path.
    etc = Path("/etc/slurm/slurm.conf")
    etc.parent.mkdir(parents=True, exist_ok=True)
    backup = etc.with_suffix(".conf.normbench-backup") if etc.exists() and not etc.is_symlink() else None
    if backup:
        etc.rename(backup)
    elif etc.is_symlink():
        etc.unlink()
    etc.symlink_to(state / "slurm.conf")
    run_munge = Path("/run/munge")
    run_munge.mkdir(parents=True, exist_ok=True)
    shutil.chown(run_munge, "munge", "munge")
    started_munge = False
    if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode != 0:
        sh(["runuser", "-u", "munge", "--", "/usr/sbin/munged"])
        started_munge = True
    sh(["/usr/sbin/slurmctld"])
    sh(["/usr/sbin/slurmd"])
    t = time.time()
    while time.time() - t < 120:
        states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout.split()
        if states and all(s == "idle" for s in states):
            break
        time.sleep(1)
    else:
        raise RuntimeError(f"SLURM node never became idle:\n{(state / 'slurmctld.log').read_text()[-3000:]}")
    yield state
    _kill_pidfile(state / "slurmd.pid")
    _kill_pidfile(state / "slurmctld.pid")
    if started_munge:
        _kill_pidfile(run_munge / "munged.pid")
    etc.unlink()
    if backup:
        backup.rename(etc)


def test_tiny_study_through_the_slurm_profile(cluster, tmp_path):
    config = {"device": "cpu", "threads": 1, "mem_mb": 500, "runtime": 5, "max_seeds": 0,
              "models": {"tiny": {"type": "vgg", "options": {"layers": [8, "M"]}}},
              "train": {"steps": 20, "eval_every": 10},
              "studies": {"lr_bs_sweep": {"grid": {"model": ["tiny"], "dataset": ["digits"], "norm": ["bn", "ln"],
                                                   "batch_size": [16], "lr": [0.01, 0.1], "seed": [0, 1]}}}}
    (tmp_path / "config").mkdir()
    (tmp_path / "config/config.yaml").write_text(yaml.safe_dump(config))
    p = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
         "--profile", str(ROOT / "workflow/profiles/slurm"), "--jobs", "2",
         "--default-resources", "slurm_partition=debug", "runtime=5", "mem_mb=500",
         # no slurmdbd here: sacct is disabled, so ask squeue (see the profile's comment)
         "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1",
         "results/lr_bs_sweep/summary.parquet"],
        capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, (p.stdout + p.stderr)[-5000:]
    out = p.stdout + p.stderr
    assert out.count("has been submitted with SLURM jobid") == 2  # the two training packs, as SLURM jobs
    s = pq.read_table(tmp_path / "results/lr_bs_sweep/summary.parquet", partitioning=None).to_pandas()
    m = pq.read_table(tmp_path / "results/lr_bs_sweep/metrics.parquet", partitioning=None).to_pandas()
    assert len(s) == 2 * 2 * 2 and set(s.norm) == {"bn", "ln"} and not s.diverged.any()
    assert len(m) == 8 * (3 * 2 + 2 * 2)  # eval at 0, 10, 20: test loss+acc each, train loss+acc after 0
    assert len(list((tmp_path / "logs/train").rglob("*.log"))) == 2  # each job's own rule log
