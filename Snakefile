# normbench: what normalization layers do to training, measured.
# A table of contents: the config and its schema, the rules, the final targets.
import time

from snakemake.utils import min_version

min_version("9.0")


# The embedded default; an experiment given with --configfile replaces it
# (Snakemake would otherwise merge the two, keeping the default studies).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


PIPE_START = []


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        all_targets(),


# After a run that trained something: how much of the machine went into training.
onstart:
    PIPE_START.append(time.time())


onsuccess:
    from normbench.bench import pipeline_stats

    local = workflow.local_exec and not workflow.dryrun  # on a cluster "cores" means nothing here
    if local and PIPE_START:
        stats = pipeline_stats(RESULTS, time.time() - PIPE_START[0], workflow.cores, since=PIPE_START[0])
        if stats:
            print(
                f"normbench: {stats['runs']} runs trained, {stats['useful_s']:.0f} s of training in "
                f"{stats['wall_s']:.0f} s on {stats['cores']} cores: useful-compute fraction "
                f"{stats['fraction']:.2f}"
            )
