# `normbench evaluate NORM` (a config with an `evaluate:` block): after the battery's studies are
# trained and aggregated, the cost of one layer is timed and the report card is written from
# their Parquet into reports/evaluate/<norm>/.  The studies' own reports are not built.
if EVALUATE:

    rule evaluate_cost:
        input:
            # after every training job: the timing runs on a machine no training shares
            [f"{RESULTS}/{s}/summary.parquet" for s in PIPE.studies],
        output:
            f"{RESULTS}/cost.parquet",
        log:
            f"{LOGS}/evaluate/cost.log",
        localrule: True
        conda:
            ENV
        params:
            norms={
                n: {
                    "type": PIPE.norms[n].type if n in PIPE.norms else n,
                    "options": PIPE.norms[n].options if n in PIPE.norms else {},
                }
                for n in [EVALUATE["norm"], *EVALUATE["baselines"]]
            },
        script:
            "../scripts/evaluate_cost.py"

    rule evaluate_card:
        input:
            summaries=[f"{RESULTS}/{s}/summary.parquet" for s in PIPE.studies],
            metrics=[f"{RESULTS}/{s}/metrics.parquet" for s in PIPE.studies],
            cost=f"{RESULTS}/cost.parquet",
        output:
            md=f"{EVALUATE['reports']}/README.md",
            csv=f"{EVALUATE['reports']}/card.csv",
            html=report(
                f"{EVALUATE['reports']}/card.html",
                caption="../report/evaluate.rst",
                category="Evaluate",
                labels={"norm": EVALUATE["norm"], "table": "report card"},
            ),
        log:
            f"{LOGS}/evaluate/card.log",
        localrule: True
        conda:
            ENV
        params:
            norm=EVALUATE["norm"],
            baselines=EVALUATE["baselines"],
            studies=list(PIPE.studies),
        script:
            "../scripts/evaluate_card.py"
