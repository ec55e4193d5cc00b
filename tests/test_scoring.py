"""The card's verdict rules (normbench.scoring): better/worse only beyond the margin, each normalizer at
its best lr chosen on other seeds than those that measure it, and better/worse held against every lr
of the other's sweep -- so that a re-implementation of a baseline is never called better or worse."""

import numpy as np
import pandas as pd
import pytest

from normbench import scoring as S


@pytest.mark.parametrize("diffs, word", [
    ([0.01, -0.02, 0.0, 0.01], S.SAME),        # inside ±0.1
    ([1.0, 1.2, 0.9, 1.1], S.BETTER),          # wholly above +0.1
    ([-1.0, -1.2, -0.9, -1.1], S.WORSE),
    ([0.05, 0.06, 0.04, 0.05], S.SAME),        # significant but inside the margin: same
    ([0.09, 0.16, 0.14, 0.13], S.UNDECIDED),   # above 0 but not wholly beyond the margin: never "better"
    ([0.2, -0.5, 0.9, -0.1], S.UNDECIDED),
    ([1.0, 1.0], S.UNDECIDED),                 # two pairs: no verdict (claims' min_n)
])
def test_verdict_is_better_or_worse_only_beyond_the_margin(diffs, word):
    assert S.verdict(diffs, 0.1, "x")[0] == word


def test_better_at_the_chosen_lr_must_hold_against_every_lr_of_the_baselines_sweep():
    best = pd.Series([1.0, 1.1, 0.9, 1.0])
    beats_one = [best, pd.Series([0.0, 0.05, -0.05, 0.0])]  # at another lr the baseline is as good
    assert S.tuned_verdict(best, [best], [best], 0.1, "x")[0] == S.BETTER
    word, ev = S.tuned_verdict(best, beats_one, [best], 0.1, "x")
    assert word == S.UNDECIDED and "every lr" in ev.note
    assert S.tuned_verdict(-best, [-best], beats_one[::-1], 0.1, "x")[0] == S.UNDECIDED


def _runs(means: dict, seeds, sd: float, rng) -> pd.DataFrame:
    """Summary rows: per norm and lr, final test accuracy = its mean + noise per seed."""
    rows = [{"norm": n, "lr": lr, "batch_size": 32, "seed": s, "final_test_acc": mu + sd * rng.standard_normal(),
             "diverged": False, "collapsed": False, "chance_acc": 0.1, "model": "net"}
            for n, per_lr in means.items() for lr, mu in per_lr.items() for s in seeds]
    return pd.DataFrame(rows)


ACC = S.Measure("test accuracy", "acc", S.final_acc, "higher", 0.01, "1 point")
ARM = S.CardArm("axis", lambda b, c: b, (ACC,), tune=S.Tune((0.5, 1.0, 2.0), S.final_acc, "higher"))
INFO = {"shared_lr": 0.1, "select": [0, 1]}


def test_the_lr_is_chosen_on_the_choosing_seeds_and_measured_on_the_others():
    s = _runs({"a": {0.05: 0.5, 0.1: 0.6, 0.2: 0.7}}, range(5), 0.0, np.random.default_rng(0))
    s.loc[(s.lr == 0.05) & s.seed.isin([0, 1]), "final_test_acc"] = 0.9  # only the choosing seeds like 0.05
    v = S.views(ARM, s, s.head(0), INFO)
    assert set(v[S.BEST].summary.lr) == {0.05} and set(v[S.BEST].summary.seed) == {2, 3, 4}
    assert set(v[S.SHARED].summary.lr) == {0.1} and set(v[S.SHARED].summary.seed) == set(range(5))
    assert v[S.BEST].lr_text == {"a": "lr 0.05"}
    assert S.final_acc(v[S.BEST].summary, None).value.tolist() == [0.5] * 3  # read on fresh seeds, not 0.9


def test_a_tie_goes_to_the_shared_lr():
    s = _runs({"a": {0.05: 0.8, 0.1: 0.8, 0.2: 0.8}}, range(5), 0.0, np.random.default_rng(0))
    assert S.choose(ARM.tune, s, s.head(0), INFO, [0, 1]).setting.tolist() == [0.1]


def test_a_twin_of_a_baseline_is_never_better_or_worse_across_the_lr_choice():
    """A re-implementation (the same accuracy at every lr, independent seed noise) graded at each one's
    best lr, 30 times: the verdict is same or undecided, never better or worse.  The lr curve is flat
    near its top, so each picks the lr its noise favours (the mechanisms are pinned one by one above)."""
    rng = np.random.default_rng(0)
    curve = {0.05: 0.84, 0.1: 0.85, 0.2: 0.845}
    words = []
    for _ in range(30):
        s = _runs({"twin": curve, "gn": curve}, range(6), 0.02, rng)
        v = S.views(ARM, s, s.head(0), {"shared_lr": 0.1, "select": [0, 1, 2]})
        words.append(S.grade(ACC, v[S.BEST], "twin", ["gn"])["verdicts"]["gn"])
    assert not {S.BETTER, S.WORSE} & set(words), pd.Series(words).value_counts()


def test_a_really_better_normalizer_is_found_at_its_own_best_lr():
    """The other side: a normalizer 10 points better at its own (higher) lr is called better against a
    baseline whose best lr is another one."""
    rng = np.random.default_rng(1)
    s = _runs({"new": {0.05: 0.7, 0.1: 0.8, 0.2: 0.95}, "gn": {0.05: 0.85, 0.1: 0.84, 0.2: 0.7}}, range(5), 0.01,
              rng)
    v = S.views(ARM, s, s.head(0), INFO)
    row = S.grade(ACC, v[S.BEST], "new", ["gn"])
    assert row["verdicts"]["gn"] == S.BETTER and row["lrs"] == {"new": "lr 0.2", "gn": "lr 0.05"}
    # at the shared lr 0.1, tuned for neither, it looks worse: the view shown beside, not the verdict
    assert S.grade(ACC, v[S.SHARED], "new", ["gn"])["verdicts"]["gn"] == S.WORSE


def test_no_baseline_trained_means_not_measured_and_says_why():
    s = _runs({"new": {0.1: 0.9}, "bn": {0.1: 0.1}, "gn": {0.1: 0.1}}, range(3), 0.0, np.random.default_rng(0))
    s.loc[s.norm != "new", "collapsed"] = True
    row = S.grade(ACC, S.View(S.ONE, s, s.head(0), {}), "new", ["bn", "gn"])
    assert row["verdicts"] == {"bn": S.NOT_MEASURED, "gn": S.NOT_MEASURED}
    assert "no baseline trained" in row["why"]["bn"]
    s.loc[s.norm == "gn", "collapsed"] = False  # one baseline trains: the measure measures something
    assert S.grade(ACC, S.View(S.ONE, s, s.head(0), {}), "new", ["bn", "gn"])["verdicts"]["bn"] != S.NOT_MEASURED


def test_a_measure_at_initialization_is_read_though_no_run_trained():
    s = _runs({"new": {0.1: 0.1}, "bn": {0.1: 0.1}}, range(3), 0.0, np.random.default_rng(0)).assign(collapsed=True)
    s["final_test_acc"] = [0.1, 0.1, 0.1, 0.5, 0.5, 0.5]
    init = S.Measure("at init", "init", S.final_acc, "higher", 0.01, "", trains=False)
    assert S.grade(init, S.View(S.ONE, s, s.head(0), {}), "new", ["bn"])["verdicts"]["bn"] == S.WORSE


def test_each_cell_says_which_runs_it_read():
    """The hook for adding seeds to an undecided verdict: the runs behind each cell."""
    s = _runs({"new": {0.05: 0.8, 0.1: 0.8, 0.2: 0.8}, "gn": {0.05: 0.8, 0.1: 0.8, 0.2: 0.8}}, range(5), 0.0,
              np.random.default_rng(0))
    row = S.grade(ACC, S.views(ARM, s, s.head(0), INFO)[S.BEST], "new", ["gn"])
    assert sorted((r["lr"], r["seed"]) for r in row["reads"]["new"]) == [(0.1, 2), (0.1, 3), (0.1, 4)]
