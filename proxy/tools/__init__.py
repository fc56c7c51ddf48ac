"""The tools layer: what people run. cli.py (the `replproxy` command), shell/, bench/, compare.py
(log formats on sample workloads), demo.py, workloads.py and render.py (result tables)."""
