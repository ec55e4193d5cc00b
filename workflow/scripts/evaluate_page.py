# Thin glue: the report card (or the leaderboard), read from the arms' runs, the properties and the cost.
from pathlib import Path

from normbench.evaluate import write_page
from normbench.glue import logged

with logged(snakemake.log[0]):
    print(write_page(snakemake.params.evaluate, snakemake.params.runs, snakemake.input.properties,
                     snakemake.input.cost, Path(snakemake.output.html).parent))
