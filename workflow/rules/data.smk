# Downloads run once, on the machine that runs Snakemake (never on compute nodes).


rule download:
    output:
        f"{PIPE.data_dir}/{{dataset}}/verified.json",
    log:
        "logs/download/{dataset}.log",
    localrule: True
    conda:
        ENV
    params:
        allow=PIPE.download,
    script:
        "../scripts/download.py"
