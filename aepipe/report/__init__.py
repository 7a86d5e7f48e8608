"""Reports of a run: the summary the pipeline prints and saves (report.json, Prefect artifacts)."""
