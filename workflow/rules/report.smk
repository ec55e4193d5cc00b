# Reports: one rule per study (its files are known from normbench.reports.ARTIFACTS),
# then an index.  Every figure and table enters the Snakemake HTML report under its
# study's category, with a caption the report job computed from the data.
from normbench.reports import ARTIFACTS


def report_targets():
    return [f"reports/{s}/README.md" for s in PIPE.studies] + ["reports/index.md"]


def _report_outputs(study):
    title = STUDIES[study].title
    caption = lambda name: f"../../reports/{study}/captions/{name}.rst"  # written by the job itself
    out = {"md": f"reports/{study}/README.md", "finding": f"reports/{study}/finding.json"}
    for kind, ext in (("figures", "png"), ("tables", "html")):
        for name, compares in ARTIFACTS[study][kind].items():
            out[f"{kind}_{name}"] = report(f"reports/{study}/{name}.{ext}", caption=caption(name), category=title,
                                           labels={"study": study, kind[:-1]: name, "compares": compares})
    for name in ARTIFACTS[study]["tables"]:
        out[f"csv_{name}"] = f"reports/{study}/{name}.csv"
    return out


for _study in PIPE.studies:

    rule:
        name:
            f"report_{_study}"
        input:
            summary=f"{RESULTS}/{_study}/summary.parquet",
            metrics=f"{RESULTS}/{_study}/metrics.parquet",
        output:
            **_report_outputs(_study),
        params:
            study=_study,
        log:
            f"logs/report/{_study}.log",
        conda:
            ENV
        script:
            "../scripts/report_study.py"


rule report_index:
    input:
        [f"reports/{s}/finding.json" for s in PIPE.studies],
    output:
        report("reports/index.md", caption="../report/index.rst", category="Index"),
    params:
        studies=list(PIPE.studies),
    log:
        "logs/report/index.log",
    conda:
        ENV
    script:
        "../scripts/report_index.py"
