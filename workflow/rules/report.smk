# Reports: one rule per study (its files are known from the study's module), then an
# index.  Every figure and table enters the Snakemake HTML report under its study's
# category, with a caption the report job computed from the data.
for _study in PIPE.studies:

    rule:
        name:
            f"report_{_study}"
        input:
            summary=f"{RESULTS}/{_study}/summary.parquet",
            metrics=f"{RESULTS}/{_study}/metrics.parquet",
            claims=f"{RESULTS}/{_study}/claims.parquet",
        output:
            **report_outputs(_study),
        log:
            f"{LOGS}/report/{_study}.log",
        localrule: True
        conda:
            ENV
        params:
            study=_study,
        script:
            "../scripts/report_study.py"


rule report_index:
    input:
        findings=[f"{REPORTS}/{s}/finding.json" for s in PIPE.studies],
        claims=[f"{RESULTS}/{s}/claims.parquet" for s in PIPE.studies],
    output:
        report(f"{REPORTS}/index.md", caption="../report/index.rst", category="Index"),
    log:
        f"{LOGS}/report/index.log",
    localrule: True
    conda:
        ENV
    params:
        studies=list(PIPE.studies),
        smoke=bool(CONFIG.get("smoke")),
    script:
        "../scripts/report_index.py"
