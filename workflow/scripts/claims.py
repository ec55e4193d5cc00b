# Thin glue: the study's claims, checked on its aggregated Parquet (each at the look the adaptive stage gave it).
from normbench.glue import logged
from normbench.publish import check_claims

with logged(snakemake.log[0]):
    claims = check_claims(snakemake.wildcards.study, snakemake.input.summary, snakemake.input.metrics,
                          snakemake.output[0], snakemake.input.topup)
    print(claims[["claim", "verdict", "seeds", "seeds_added", "measured"]].to_string(index=False))
