# Thin glue: one study's tables, figures and captions from its aggregated Parquet.
from pathlib import Path

from normbench.glue import logged
from normbench.publish import build_study

with logged(snakemake.log[0]):
    rep = build_study(snakemake.params.study, snakemake.input.summary, snakemake.input.metrics,
                      snakemake.input.claims, Path(snakemake.output.md).parent)
    print(rep.finding)
