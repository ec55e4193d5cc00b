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
        f"{LOGS}/train/{{study}}/{{pack}}.log",
    benchmark:
        f"{BENCHMARKS}/train/{{study}}/{{pack}}.tsv"
    priority: lambda w: PIPE.pack_priority(w.study, w.pack)
    retries: 2
    conda:
        ENV
    threads: lambda w: PIPE.studies[w.study].threads
    resources:
        mem_mb=lambda w, attempt: PIPE.studies[w.study].mem_mb * attempt,
        runtime=lambda w: PIPE.studies[w.study].runtime,
        gpu=PIPE.gpu(),
        gpu_slots=PIPE.gpu(),  # jobs sharing a GPU: the local run offers GPUs x gpu_jobs slots
    params:
        jobs=lambda w: PIPE.pack_jobs(w.study, w.pack),
        checkpoints=lambda w: PIPE.checkpoint_dir(w.study, w.pack),
    script:
        "../scripts/train_pack.py"
