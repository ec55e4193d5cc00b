# Thin glue: time one layer of NORM and of each baseline, forward + backward, on this machine.
from normbench.cost import measure
from normbench.glue import logged
from normbench.store import write_parquet

with logged(snakemake.log[0]):
    times = measure(snakemake.params.norms)
    write_parquet(times, snakemake.output[0])
    print((times.groupby("norm").seconds.median() * 1e6).round(1).to_string())
