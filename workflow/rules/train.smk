# One job trains one pack: the runs of a study that differ only in lr and seed
# (or a single run when the study sets pack: false).  Each run writes its own
# Parquet under results/<study>/runs/; the pack marker is written last.
# Checkpoints live outside the outputs, so a failed or killed job resumes.


rule train:
    input:
        dataset_markers,
    output:
        f"{RESULTS}/{{study}}/packs/{{pack}}/pack.json",
    params:
        jobs=lambda w: PIPE.pack_jobs(w.study, w.pack),
    log:
        "logs/train/{study}/{pack}.log",
    benchmark:
        "benchmarks/train/{study}/{pack}.tsv"
    threads: lambda w: PIPE.studies[w.study].threads
    resources:
        mem_mb=lambda w, attempt: PIPE.studies[w.study].mem_mb * attempt,
        runtime=lambda w: PIPE.studies[w.study].runtime,
        gpu=PIPE.gpu(),
    retries: 2
    conda:
        ENV
    script:
        "../scripts/train_pack.py"
