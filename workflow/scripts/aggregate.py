# Thin glue: concatenate the study's run files into its two Parquet tables.
from normbench.glue import logged
from normbench.store import aggregate_runs

with logged(snakemake.log[0]):
    runs, rows = aggregate_runs(snakemake.params.summaries, snakemake.params.metrics, snakemake.output.summary,
                                snakemake.output.metrics)
    print(f"{snakemake.wildcards.study}: {runs} runs, {rows} metric rows")
