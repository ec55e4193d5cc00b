# Thin glue: reports/index.md linking every study with its one-line finding.
from pathlib import Path

from normbench.glue import logged
from normbench.reports import write_index

with logged(snakemake.log[0]):
    write_index(Path(snakemake.output[0]).parent, snakemake.params.studies)
