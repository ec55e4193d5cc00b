# Thin glue: verify the dataset's files, downloading them first if allowed.
from pathlib import Path

from normbench.glue import logged
from normbench.mirrors import ensure

with logged(snakemake.log[0]):
    marker = Path(snakemake.output[0])  # <data_dir>/<dataset>/verified.json
    ensure(snakemake.wildcards.dataset, marker.parent.parent, snakemake.params.allow, marker)
