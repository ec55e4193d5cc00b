"""`normbench gpu-check` end to end on the CPU, in its small mode: the bench's rows (each saying the
mode it really used), a tiny pipeline and its verdicts beside a CPU results folder's, the real-data
slice on small Fashion-MNIST files in the real format -- one folder, and a summary that says what a
GPU would add."""

import dataclasses
from pathlib import Path

import pandas as pd
import pytest

from fixtures import write_mnist
from normbench import mirrors
from normbench.claims import CLAIMS_SCHEMA
from normbench.cli import main
from normbench.gpucheck import tiny_config
from normbench.studies import STUDIES
from normbench.store import write_parquet

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_end_to_end_on_the_cpu(tmp_path, monkeypatch, capsys):
    sums = write_mnist(tmp_path / "resources", "fashion_mnist", "FashionMNIST", n=256, gz=True)
    monkeypatch.setitem(mirrors.SOURCES, "fashion_mnist",
                        dataclasses.replace(mirrors.SOURCES["fashion_mnist"], checksums=sums))
    cpu = tmp_path / "cpu-results"
    claim = {c: None for c in CLAIMS_SCHEMA.names}
    (study,) = tiny_config()["studies"]  # a study's claims on a few tiny runs: compared, whatever they say
    ids = [c.id for c in STUDIES.get(study).claims]
    write_parquet(pd.DataFrame([{**claim, "study": study, "claim": c, "verdict": "inconclusive", "n": 2} for c in ids]),
                  cpu / study / "claims.parquet", CLAIMS_SCHEMA)
    monkeypatch.chdir(tmp_path)
    code = main(["gpu-check", "--out", "check", "--cpu-results", str(cpu), "--cores", "2",
                 "--snakefile", str(ROOT / "Snakefile")])
    printed = capsys.readouterr().out
    folder = tmp_path / "check"
    assert sorted(p.name for p in folder.iterdir() if p.is_file()) == [
        "bench.csv", "realdata_slice.csv", "step_costs.csv", "summary.md", "verdicts.csv"]
    assert printed.strip().splitlines() == (folder / "summary.md").read_text().strip("`\n").splitlines()

    bench = pd.read_csv(folder / "bench.csv")
    assert list(bench.case) == ["digits CNN + BN, b32, solo", "digits CNN + BN, b32, pack of 3"]
    assert (bench["mode"] == "eager (device cpu is not CUDA)").all() and (bench.ms > 0).all()

    verdicts = pd.read_csv(folder / "verdicts.csv")
    assert list(verdicts.claim) == ids and (verdicts[str(cpu)] == "inconclusive").all()
    same = int(verdicts.same.sum())
    assert code == (0 if same == len(ids) else 1)
    assert f"verdicts here vs {cpu}: {same} of {len(ids)} agree" in printed
    assert list((folder / f"pipeline/results/{study}").glob("claims.parquet"))

    # the GN table's smallest batch (2 per worker, 8 workers) at seed 0: BN and GN, FRN and EvoNorm, GN + WS
    slice_ = pd.read_csv(folder / "realdata_slice.csv")
    assert sorted(zip(slice_.model, slice_.norm)) == [("resnet14", "bn"), ("resnet14", "evonorm_s0"),
                                                      ("resnet14", "frn"), ("resnet14", "gn8"), ("resnet14_ws", "gn8")]
    assert (slice_.batch_size == 2).all() and (slice_.workers == 8).all() and (slice_.steps == 2).all()
    assert (slice_.estimate_s > 0).all() and (slice_.train_time_s > 0).all()
    assert "the whole tier (338 runs, 40 kinds of step): not extrapolated in small mode" in printed
    assert "Skipped in small mode" in printed and "a GPU run adds:" in printed
    assert "the whole default pipeline with device: cuda" in printed
