# Thin glue: the report card, read across the battery's aggregated Parquet and the cost table.
from pathlib import Path

from normbench import card
from normbench.glue import logged

with logged(snakemake.log[0]):
    studies = dict(zip(snakemake.params.studies, zip(snakemake.input.summaries, snakemake.input.metrics)))
    result = card.build(snakemake.params.norm, snakemake.params.baselines, card.read(studies, snakemake.input.cost))
    card.write(result, Path(snakemake.output.md).parent)
    print("\n".join(f"{axis}: {line}" for axis, line in result["summary"].items()))
