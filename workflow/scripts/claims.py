# Thin glue: the study's claims, checked on its aggregated Parquet.
from normbench.glue import logged
from normbench.publish import check_claims

with logged(snakemake.log[0]):
    claims = check_claims(snakemake.wildcards.study, snakemake.input.summary, snakemake.input.metrics,
                          snakemake.output[0])
    print(claims[["claim", "verdict", "measured"]].to_string(index=False))
