# Downloads run once, on the machine that runs Snakemake (never on compute nodes).
localrules:
    download,


rule download:
    output:
        f"{PIPE.data_dir}/{{dataset}}/verified.json",
    params:
        allow=PIPE.download,
    log:
        "logs/download/{dataset}.log",
    conda:
        ENV
    script:
        "../scripts/download.py"
