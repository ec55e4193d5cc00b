"""`normbench run`: Snakemake's own `--config KEY=VALUE` reaches Snakemake untouched (argparse
does not take it for a prefix of our --configfile), and the config check before any job
applies those overrides."""

import subprocess
import sys
from pathlib import Path

import pytest

from normbench import cli, launcher

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("argv, extra", [
    (["run", "--config", "device=cuda"], ["--config", "device=cuda"]),
    (["run", "-n", "--config", "device=cuda", "threads=2", "--cores", "2"],
     ["-n", "--config", "device=cuda", "threads=2", "--cores", "2"]),
    (["run", "--configf", "x.yaml"], ["--configf", "x.yaml"]),  # no prefix matching of our options either
])
def test_config_is_not_taken_for_configfile(argv, extra):
    args, rest = cli.build_parser().parse_known_args(argv)
    assert args.configfile is None
    assert rest == extra


def test_configfile_stays_ours():
    args, rest = cli.build_parser().parse_known_args(["run", "--configfile", "x.yaml", "--config", "device=cpu"])
    assert args.configfile == "x.yaml" and rest == ["--config", "device=cpu"]


def test_overrides_are_read_as_snakemake_reads_them():
    assert launcher.config_overrides(["-n", "--config", "device=cuda", "threads=2", "--cores", "2",
                                      "--config=runtime=5"]) == {"device": "cuda", "threads": 2, "runtime": 5}
    assert launcher.config_overrides(["-C", "device=cpu"]) == {"device": "cpu"}
    assert launcher.config_overrides(["--cores", "2"]) == {}


@pytest.fixture
def snakemake_calls(monkeypatch, tmp_path):
    """Run `normbench run` from a scratch directory with Snakemake replaced by a recorder."""
    calls = []
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(launcher.subprocess, "run",
                        lambda cmd, **kw: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    return calls


def test_launcher_passes_config_to_snakemake(snakemake_calls, monkeypatch):
    monkeypatch.setattr(launcher, "gpu_slot_args", lambda config, extra: [])  # GPU slots: tests/test_devices.py
    rc = cli.main(["run", "--snakefile", str(ROOT / "Snakefile"), "--no-report", "--config", "device=cuda",
                   "threads=2", "-n"])
    assert rc == 0
    [main] = snakemake_calls
    assert main == [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--workflow-profile",
                    str(ROOT / "workflow/profiles/default"), "--config", "device=cuda", "threads=2", "-n"]
    assert "--configfile" not in main


def test_a_killed_runs_snakemake_locks_are_cleared_before_the_run(snakemake_calls, tmp_path):
    locks = tmp_path / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.input.lock").write_text("results/x\n")  # what a SIGKILLed Snakemake leaves
    assert cli.main(["run", "--snakefile", str(ROOT / "Snakefile"), "--no-report", "-n"]) == 0
    assert not locks.exists() and len(snakemake_calls) == 1


def test_bad_config_override_is_one_clear_error_before_snakemake(snakemake_calls, capsys):
    rc = cli.main(["run", "--snakefile", str(ROOT / "Snakefile"), "--config", "device=gpu"])
    assert rc == 2 and snakemake_calls == []
    err = capsys.readouterr().err.strip()
    assert err.endswith("with --config device=gpu: device: 'gpu' is not valid; allowed: auto (CUDA if present), "
                        "cpu, cuda or cuda:N.")
    assert len(err.splitlines()) == 1


def test_the_config_checked_is_the_one_snakemake_reads(snakemake_calls, tmp_path, capsys):
    """Snakemake reads `config/config.yaml` from its working directory: that file is checked."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config/config.yaml").write_text("device: gpu\nstudies: {}\n")
    assert cli.main(["run", "--snakefile", str(ROOT / "Snakefile"), "-n"]) == 2 and snakemake_calls == []
    assert capsys.readouterr().err.startswith("normbench: config error: config/config.yaml: ")


def test_progress_follows_the_targeted_studies():
    import trees
    from normbench.config import load

    config = load({**trees.TINY, "results": "res"})
    assert set(launcher.tracker(config, []).studies) == {"lr_bs_sweep", "gn_small_batch", "bn_placement"}
    assert launcher.tracker(config, ["--cores", "2", "res/gn_small_batch/summary.parquet"]).studies == ["gn_small_batch"]
    t = launcher.tracker(config, ["--directory", "/elsewhere"])
    assert str(t.files[0]).startswith("/elsewhere/res/lr_bs_sweep/runs/summary/model~tiny/")


def test_in_a_terminal_snakemakes_lines_pass_above_the_bars(monkeypatch, capsys, tmp_path):
    from normbench.progress import Tracker
    from test_progress import fake_plan

    monkeypatch.setattr(launcher, "tracker", lambda config, extra: Tracker(fake_plan([("a", "mlp", "r1")]), tmp_path))
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    monkeypatch.setattr(launcher, "terminal_width", lambda: 120)
    rc = launcher.watched([sys.executable, "-c", "import sys; print('rule train:'); sys.exit(3)"], {}, [], 30.0)
    err = capsys.readouterr().err
    assert rc == 3  # Snakemake's exit status, through the pipe
    assert "rule train:\n" in err and "\rall runs:   0%|" in err and "\r       a:   0%|" in err
    assert err.splitlines()[-1].startswith("normbench: 0/1 runs finished (0%)")
    monkeypatch.setattr(launcher, "terminal_width", lambda: 0)  # a terminal of no size: plain lines
    rc = launcher.watched([sys.executable, "-c", "import sys; sys.exit(0)"], {}, [], 30.0)
    assert rc == 0 and "\r" not in capsys.readouterr().err


def test_snakemake_skips_the_runners_checks_only_for_the_config_the_launcher_checked(snakemake_calls, tmp_path,
                                                                                         monkeypatch):
    """`normbench evaluate` and `leaderboard` build every run structure before Snakemake starts; Snakemake,
    reading the file they wrote, need not build them again -- but a --config override, or any other
    config, is checked in full."""
    import yaml
    from snakemake.common.configfile import load_configfile
    from snakemake.utils import update_config

    from normbench import evaluate
    from normbench.config import CHECKED_ENV, checked_here

    cfg = {"device": "cpu", "train": {"steps": 150, "init_std": 1e-05},
           "studies": {"lr_bs_sweep": {"grid": {"model": ["mlp"], "dataset": ["digits"], "norm": ["bn"],
                                                "batch_size": [8], "lr": [0.05, 0.2], "seed": [0, 1]}}}}
    path = tmp_path / "checked.yaml"
    path.write_text(yaml.dump(cfg, Dumper=evaluate._Plain, sort_keys=False))
    seen = []
    monkeypatch.setattr(launcher.subprocess, "run", lambda cmd, **kw: seen.append(dict(launcher.os.environ)) or
                        subprocess.CompletedProcess(cmd, 0))
    assert launcher.run(str(path), str(ROOT / "Snakefile"), ["-n"], checked=cfg) == 0
    env = seen[-1]
    read = load_configfile(str(path))  # as Snakemake reads it
    assert checked_here(read, env)
    overridden = load_configfile(str(path))
    update_config(overridden, {"seed_offset": 100})
    assert not checked_here(overridden, env) and not checked_here(read, {})
    assert launcher.run(str(path), str(ROOT / "Snakefile"), ["-n"]) == 0  # `normbench run`: nothing checked
    assert CHECKED_ENV not in seen[-1]
