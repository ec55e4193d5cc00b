# Per study: the base runs' first look at the claims decides which runs get more seeds (a
# checkpoint: results/<study>/topup.json), those runs train, then every run's Parquet ->
# results/<study>/{summary,metrics}.parquet, and the paper's claims checked on them ->
# results/<study>/claims.parquet.  Light work that reads many small files: it runs where
# Snakemake runs, not as cluster jobs.


checkpoint topup:
    input:
        lambda w: PIPE.markers(w.study, topup=False),
    output:
        f"{RESULTS}/{{study}}/topup.json",
    log:
        f"{LOGS}/topup/{{study}}.log",
    localrule: True
    conda:
        ENV
    params:
        summaries=lambda w: PIPE.base_files(w.study, "summary"),
        metrics=lambda w: PIPE.base_files(w.study, "metrics"),
        max_seeds=lambda w: PIPE.studies[w.study].max_seeds,
        evaluate=EVALUATE or {},  # a card or the leaderboard: seeds for its undecided verdicts, not the claims
    script:
        "../scripts/topup.py"


rule aggregate:
    input:
        lambda w: PIPE.markers(w.study, topup=False),
        lambda w: topup_markers(w.study),
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
        topup=f"{RESULTS}/{{study}}/topup.json",
    output:
        f"{RESULTS}/{{study}}/claims.parquet",
    log:
        f"{LOGS}/claims/{{study}}.log",
    localrule: True
    conda:
        ENV
    script:
        "../scripts/claims.py"
