# Thin glue: reports/index.md, every study's claims in one table, then the studies.
from pathlib import Path

from normbench.glue import logged
from normbench.publish import write_index

with logged(snakemake.log[0]):
    write_index(Path(snakemake.output[0]).parent, snakemake.params.studies, snakemake.input.claims,
                snakemake.params.smoke)
