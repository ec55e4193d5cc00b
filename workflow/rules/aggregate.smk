# Per study: every run's Parquet -> results/<study>/{summary,metrics}.parquet, then the
# paper's claims checked on them -> results/<study>/claims.parquet.  Light work that reads
# many small files: it runs where Snakemake runs, not as cluster jobs.


rule aggregate:
    input:
        lambda w: PIPE.markers(w.study),
    output:
        summary=f"{RESULTS}/{{study}}/summary.parquet",
        metrics=f"{RESULTS}/{{study}}/metrics.parquet",
    log:
        f"{LOGS}/aggregate/{{study}}.log",
    localrule: True
    conda:
        ENV
    params:
        summaries=lambda w: PIPE.files(w.study, "summary"),
        metrics=lambda w: PIPE.files(w.study, "metrics"),
    script:
        "../scripts/aggregate.py"


rule claims:
    input:
        summary=f"{RESULTS}/{{study}}/summary.parquet",
        metrics=f"{RESULTS}/{{study}}/metrics.parquet",
    output:
        f"{RESULTS}/{{study}}/claims.parquet",
    log:
        f"{LOGS}/claims/{{study}}.log",
    localrule: True
    conda:
        ENV
    script:
        "../scripts/claims.py"
