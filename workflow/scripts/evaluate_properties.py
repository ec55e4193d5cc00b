# Thin glue: the properties of every normalizer of the page (seconds, no training).
from normbench import properties
from normbench.glue import logged
from normbench.store import write_parquet

with logged(snakemake.log[0]):
    props = properties.measure(snakemake.params.norms, snakemake.params.dtype)
    write_parquet(props, snakemake.output[0], properties.PROPERTIES_SCHEMA)
    print(properties.summary(props))
