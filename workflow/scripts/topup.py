# Thin glue: the first look at the study's claims on its base runs -> which runs get more seeds.
from normbench.glue import logged
from normbench.publish import decide_topup

with logged(snakemake.log[0]):
    decision = decide_topup(snakemake.wildcards.study, snakemake.params.summaries, snakemake.params.metrics,
                            snakemake.params.max_seeds, snakemake.output[0], snakemake.params.evaluate)
    for claim, c in decision["claims"].items():
        print(f"{claim}: {c['verdict']} on {c['n']} seeds; added {len(c['added'])}")
