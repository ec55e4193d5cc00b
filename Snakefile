# normbench: what normalization layers do to training, measured.
# A table of contents: the config and its schema, the rules, the final targets.
from snakemake.utils import min_version

min_version("9.0")


# The embedded default; an experiment given with --configfile replaces it
# (Snakemake would otherwise merge the two, keeping the default studies).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/evaluate.smk"


rule all:
    input:
        all_targets(),


onstart:
    pipeline_started()


onsuccess:
    pipeline_finished(workflow)
