# Reports: one rule per study (its files are known from normbench.reports.ARTIFACTS),
# then an index.  Every figure and table enters the Snakemake HTML report under its
# study's category, with a caption the report job computed from the data.
for _study in PIPE.studies:

    rule:
        name:
            f"report_{_study}"
        localrule: True
        input:
            summary=f"{RESULTS}/{_study}/summary.parquet",
            metrics=f"{RESULTS}/{_study}/metrics.parquet",
        output:
            **report_outputs(_study),
        params:
            study=_study,
        log:
            f"logs/report/{_study}.log",
        conda:
            ENV
        script:
            "../scripts/report_study.py"


localrules:
    report_index,


rule report_index:
    input:
        [f"reports/{s}/finding.json" for s in PIPE.studies],
    output:
        report("reports/index.md", caption="../report/index.rst", category="Index"),
    params:
        studies=list(PIPE.studies),
    log:
        "logs/report/index.log",
    conda:
        ENV
    script:
        "../scripts/report_index.py"
