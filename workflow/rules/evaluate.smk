# `normbench evaluate NORM` and `normbench leaderboard` (a config with an `evaluate:` block): the
# properties of every normalizer (seconds, first), the arms' training runs (ordinary train jobs, shared
# by every card of the tier), the cost of one layer timed side by side after the training, and the page
# -- a card or the leaderboard -- read from the arms' runs (aggregated per study, as a study's are).  The
# studies' own reports are not built.
if EVALUATE:

    rule evaluate_properties:
        output:
            f"{RESULTS}/properties/{EVALUATE['name']}.parquet",
        log:
            f"{LOGS}/evaluate/properties/{EVALUATE['name']}.log",
        priority: 1000  # seconds, and what a reviewer reads first: before any training
        localrule: True
        conda:
            ENV
        params:
            norms={n: evaluate_entry(n) for n in evaluate_norms()},
            dtype=EVALUATE["dtype"],
        script:
            "../scripts/evaluate_properties.py"

    rule evaluate_cost:
        input:
            evaluate_runs,  # after every training job: the timing runs on a machine no training shares
        output:
            f"{RESULTS}/cost/{EVALUATE['name']}.parquet",
        log:
            f"{LOGS}/evaluate/cost/{EVALUATE['name']}.log",
        localrule: True
        conda:
            ENV
        params:
            norms={n: evaluate_entry(n) for n in evaluate_norms()},
            dtype=EVALUATE["dtype"],
            bf16=EVALUATE["bf16"],
        script:
            "../scripts/evaluate_cost.py"

    rule evaluate_page:
        input:
            runs=evaluate_runs,
            properties=f"{RESULTS}/properties/{EVALUATE['name']}.parquet",
            cost=f"{RESULTS}/cost/{EVALUATE['name']}.parquet",
        output:
            [f"{EVALUATE['reports']}/{f}" for f in evaluate_files() if not f.endswith(".html")],
            html=report(
                f"{EVALUATE['reports']}/{evaluate_files()[-1]}",
                caption="../report/evaluate.rst",
                category="Evaluate",
                labels={"page": EVALUATE["name"], "table": EVALUATE["page"]},
            ),
        log:
            f"{LOGS}/evaluate/{EVALUATE['name']}.log",
        localrule: True
        conda:
            ENV
        params:
            evaluate=EVALUATE,
            runs={s: ([f"{RESULTS}/{s}/summary.parquet"], [f"{RESULTS}/{s}/metrics.parquet"]) for s in PIPE.studies},
        script:
            "../scripts/evaluate_page.py"
