# One job trains one pack: the runs of a study that differ only in the packed grid
# columns (lr and seed by default).  Each run writes its own Parquet files under
# results/<study>/runs/; the pack marker is written last.  Checkpoints live outside
# the outputs, so a failed, killed or pre-empted job resumes where it stopped.


rule train:
    input:
        dataset_markers,
    output:
        f"{RESULTS}/{{study}}/packs/{{pack}}/pack.json",
    log:
        "logs/train/{study}/{pack}.log",
    benchmark:
        "benchmarks/train/{study}/{pack}.tsv"
    retries: 2
    conda:
        ENV
    threads: lambda w: PIPE.studies[w.study].threads
    resources:
        mem_mb=lambda w, attempt: PIPE.studies[w.study].mem_mb * attempt,
        runtime=lambda w: PIPE.studies[w.study].runtime,
        gpu=PIPE.gpu(),
    params:
        jobs=lambda w: PIPE.pack_jobs(w.study, w.pack),
        checkpoints=lambda w: PIPE.checkpoint_dir(w.study, w.pack),
    script:
        "../scripts/train_pack.py"
