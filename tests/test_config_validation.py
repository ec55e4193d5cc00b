"""Bad configs fail before any job, with the key, the value and the choices."""

import copy
from pathlib import Path

import pytest
import yaml

from normbench.config import load as load_file
from normbench.errors import ConfigError
from normbench.pipeline import load_pipeline as load_config
from normbench.settings import TRAIN_SETTINGS

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = yaml.safe_load((ROOT / "config/config.yaml").read_text())


def mutate(fn):
    c = copy.deepcopy(DEFAULT)
    fn(c)
    return c


def sweep(c):
    return c["studies"]["lr_bs_sweep"]


def grid(c):
    """lr_bs_sweep's first sub-grid (the checks below edit one grid)."""
    g = sweep(c)["grid"]
    return g[0] if isinstance(g, list) else g


BAD = {
    "unknown study": (lambda c: c["studies"].__setitem__("imagenet_sweep", sweep(c)),
                      r"studies\.imagenet_sweep: study 'imagenet_sweep' is unknown; valid: bjorck, .*lr_bs_sweep"),
    "unknown norm in grid": (lambda c: grid(c).__setitem__("norm", ["bn", "batchnorm"]),
                             r"studies\.lr_bs_sweep\.grid\.(0\.)?norm: norm type 'batchnorm' is unknown; valid: .*gn.*"
                             r"or an entry under norms: bn_noaffine, dyt_a05"),
    "unknown norm type": (lambda c: c["norms"].__setitem__("xn", {"type": "xnorm"}),
                          r"norms\.xn: norm type 'xnorm' is unknown; valid: .*bn"),
    "unknown norm option": (lambda c: c["norms"]["gn"].__setitem__("options", {"grops": 2}),
                            r"norms\.gn: norm 'gn': unknown option\(s\) grops; allowed: .*groups"),
    "unknown model": (lambda c: grid(c).__setitem__("model", ["resnet9000"]),
                      r"studies\.lr_bs_sweep\.grid\.(0\.)?model: model type 'resnet9000' is unknown; valid: .*vgg"),
    "unknown dataset": (lambda c: grid(c).__setitem__("dataset", ["imagenet"]),
                        r"studies\.lr_bs_sweep\.grid\.(0\.)?dataset: dataset 'imagenet' is unknown; valid: .*digits"),
    "unknown optimizer": (lambda c: sweep(c)["train"].__setitem__("optimizer", "rmsprop"),
                          r"studies\.lr_bs_sweep\.train: optimizer: 'rmsprop' .*sgd, momentum, adam"),
    "wrong type": (lambda c: grid(c).__setitem__("batch_size", ["big"]),
                   r"studies\.lr_bs_sweep\.grid\.(0\.)?batch_size\.0: 'big' is not of type 'integer'"),
    "negative lr": (lambda c: grid(c).__setitem__("lr", [0.1, -0.01]),
                    r"studies\.lr_bs_sweep\.grid\.(0\.)?lr\.1: -0\.01 is less than or equal to the minimum of 0"),
    "empty grid": (lambda c: grid(c).__setitem__("seed", []),
                   r"studies\.lr_bs_sweep\.grid\.(0\.)?seed: \[\] should be non-empty"),
    "bad group count": (lambda c: c["norms"]["gn"].__setitem__("options", {"groups": 3}),
                        r"studies\.lr_bs_sweep\.grid: .*gn: groups=3 does not divide a layer of 16 channels"),
    "instance norm on 1×1 maps": (lambda c: grid(c).update(model=["resnet18"], norm=["in"]),
                                  r"studies\.lr_bs_sweep\.grid: model 'resnet18' with norm 'in' on digits: "
                                  r"model 'resnet18' cannot run on inputs of shape \(1, 8, 8\): Expected more than 1"),
    "instance norm on an MLP": (lambda c: grid(c).update(model=["mlp"], norm=["in"]),
                                r"studies\.lr_bs_sweep\.grid: .*'in' needs conv feature maps"),
    "quoted number": (lambda c: grid(c).__setitem__("lr", ["0.1"]),
                      r"studies\.lr_bs_sweep\.grid\.(0\.)?lr\.0: '0\.1' is not of type 'number'"),
    "unknown key": (lambda c: sweep(c).__setitem__("learning_rate", [0.1]),
                    r"studies\.lr_bs_sweep\.learning_rate: unknown key; allowed: enabled, grid"),
    "unknown train setting": (lambda c: sweep(c)["train"].__setitem__("stepz", 3),
                              r"studies\.lr_bs_sweep\.train\.stepz: unknown key \(did you mean 'steps'\?\); allowed: .*"),
    "typo in a grid key": (lambda c: grid(c).__setitem__("batchsize", grid(c).pop("batch_size")),
                           r"studies\.lr_bs_sweep\.grid\.(0\.)?batchsize: unknown key \(did you mean 'batch_size'\?\); "
                           r"allowed: activation, batch_size"),
    "unknown activation": (lambda c: grid(c).__setitem__("activation", ["gelu"]),
                           r"studies\.lr_bs_sweep\.grid\.(0\.)?activation: 'gelu' is not valid; choose one of relu"),
    "unknown input scaling": (lambda c: c["studies"]["feature_scaling"]["grid"].__setitem__("norm", ["zscore"]),
                              r"studies\.feature_scaling\.grid\.norm: input scaling 'zscore' is unknown; valid: "
                              r"mean_norm, minmax, raw, standardize"),
    "user norm that cannot be imported": (lambda c: c["norms"].__setitem__("mine", {"type": "nowhere.mod:X"}),
                                          r"norms\.mine: norm type 'nowhere.mod:X': cannot import 'nowhere.mod'"),
    "probes with workers": (lambda c: sweep(c)["train"].update(workers=2, probes=["ics"], probe_every=5),
                            r"studies\.lr_bs_sweep\.train: workers: 2 with probes"),
    "bad placement": (lambda c: grid(c).__setitem__("placement", ["middle"]),
                      r"placement: 'middle' is not valid; choose one of pre, post"),
    "batch larger than data": (lambda c: grid(c).__setitem__("batch_size", [5000]),
                               r"studies\.lr_bs_sweep\.grid\.(0\.)?batch_size: 5000 exceeds the 1437 training examples of digits"),
    "unknown probe": (lambda c: sweep(c)["train"].__setitem__("probes", ["hessian"]),
                      r"studies\.lr_bs_sweep\.train: probes: 'hessian' is not valid; choose one of ics"),
    "bad lp": (lambda c: c["norms"]["lp1_bn"].__setitem__("options", {"p": 3}),
               r"norms\.lp1_bn: lp_bn: p=3 is not one of 1, 2, inf"),
    "bad gn option in an unused entry": (lambda c: c["norms"].__setitem__("gnx", {"type": "gn", "options": {"grops": 1}}),
                                         r"norms\.gnx: norm 'gn': unknown option"),
    "every study disabled": (lambda c: [s.__setitem__("enabled", False) for s in c["studies"].values()],
                             r"studies: every study is disabled"),
    "bad device": (lambda c: c.__setitem__("device", "tpu"), r"device: 'tpu' is not valid; allowed: auto"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_config_is_one_clear_error(name):
    fn, pattern = BAD[name]
    with pytest.raises(ConfigError, match=pattern):
        load_config(mutate(fn))


def test_yaml_errors_name_the_file_and_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("studies:\n  lr_bs_sweep:\n    grid: {model: [cnn\n    train: {}\n")
    with pytest.raises(ConfigError, match=rf"{f}, line \d+, column \d+: not valid YAML: "):
        load_file(f)
    with pytest.raises(ConfigError, match=rf"{tmp_path / 'missing.yaml'}: no such config file"):
        load_file(tmp_path / "missing.yaml")
    f.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping with a 'studies' key"):
        load_file(f)


def test_schema_train_block_lists_exactly_the_train_settings():
    """One place for the settings' names (normbench.settings); the schema is checked against it."""
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    assert set(schema["definitions"]["train"]["properties"]) == set(TRAIN_SETTINGS)


def test_missing_dataset_files_offline(tmp_path):
    c = mutate(lambda c: (grid(c).__setitem__("dataset", ["cifar10"]),
                          c.update(download=False, data_dir=str(tmp_path))))
    with pytest.raises(ConfigError, match=r"download: false, but dataset 'cifar10' is not in .*normbench download"):
        load_config(c)


def test_exponent_without_dot_is_a_number():
    c = mutate(lambda c: grid(c).__setitem__("lr", ["1e-3", 1.0e-2]))
    runs = load_config(c).studies["lr_bs_sweep"].runs
    assert sorted(runs[runs._grid == 0].lr.unique()) == [0.001, 0.01]
    text = (ROOT / "config/config.yaml").read_text().replace("lr: [0.05, 0.2, 0.5, 1.0, 4.0]", "lr: [1e-3, 5e-2]")
    assert yaml.safe_load(text)["studies"]["lr_bs_sweep"]["grid"][0]["lr"] == ["1e-3", "5e-2"]  # the YAML pitfall
    runs = load_config(yaml.safe_load(text)).studies["lr_bs_sweep"].runs
    assert sorted(runs[runs._grid == 0].lr.unique()) == [0.001, 0.05]


def test_lr_rule_scales_with_batch():
    runs = load_config(DEFAULT).studies["gn_small_batch"].runs
    lrs = dict(zip(runs.batch_size, runs.lr))
    assert lrs == {32: 0.1, 16: 0.05, 8: 0.025, 4: 0.0125, 2: 0.00625}


def test_default_grids_and_paths():
    pipe = load_config(DEFAULT)
    from normbench.studies import STUDIES

    assert set(pipe.studies) == set(STUDIES)  # the default config runs every study
    files = pipe.files("lr_bs_sweep", "summary")
    assert len(files) == len(set(files)) == len(pipe.studies["lr_bs_sweep"].runs)
    assert files[0] == ("results/lr_bs_sweep/runs/summary/model~cnn/dataset~digits/norm~none/placement~pre/"
                        "activation~relu/batch_size~8/lr~0.05/seed~0.parquet")
    assert "=" not in "".join(files)  # no key=value folders for readers to infer (mis-typed) columns from
    # the default trains the whole sweep in one job (pack: [norm, batch_size, lr, seed]) ...
    packs = pipe.packs("lr_bs_sweep")
    assert len(packs) == 1 and all(len(v) == 2 * 2 * 5 * 8 + 2 * 2 * 3 * 3 for v in packs.values())
    # ... and `pack: true` means the runs that differ only in lr and seed
    c = mutate(lambda c: sweep(c).__setitem__("pack", True))
    packs = load_config(c).packs("lr_bs_sweep")
    assert len(packs) == 8 and sorted(map(len, packs.values())) == [9] * 4 + [40] * 4
    with pytest.raises(ConfigError, match=r"studies\.lr_bs_sweep\.pack: 'depth' is not a grid column"):
        load_config(mutate(lambda c: sweep(c).__setitem__("pack", ["depth"])))
