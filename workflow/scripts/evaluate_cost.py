# Thin glue: time and peak memory of one layer of every normalizer, side by side, on this machine.
from normbench.cost import COST_SCHEMA, measure
from normbench.glue import logged
from normbench.store import write_parquet

with logged(snakemake.log[0]):
    cost = measure(snakemake.params.norms, dtype=snakemake.params.dtype, bf16=snakemake.params.bf16)
    write_parquet(cost, snakemake.output[0], COST_SCHEMA)
    print(cost.groupby(["device", "norm"])[["seconds", "peak_bytes"]].median().to_string())
