# Per study: every run's Parquet -> results/<study>/{summary,metrics}.parquet.


# Light work that reads many small files: it runs where Snakemake runs, not as cluster jobs.
localrules:
    aggregate,


rule aggregate:
    input:
        lambda w: PIPE.markers(w.study),
    output:
        summary=f"{RESULTS}/{{study}}/summary.parquet",
        metrics=f"{RESULTS}/{{study}}/metrics.parquet",
    params:
        runs=lambda w: PIPE.run_dirs(w.study),
    log:
        "logs/aggregate/{study}.log",
    conda:
        ENV
    script:
        "../scripts/aggregate.py"
