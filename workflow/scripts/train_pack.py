# Thin glue: train the pack's runs (skipping finished ones), then write the marker.
from normbench.glue import logged
from normbench.pack import run_pack

with logged(snakemake.log[0]):
    run_pack(snakemake.params.jobs, snakemake.output[0], checkpoint_dir=snakemake.params.checkpoints)
