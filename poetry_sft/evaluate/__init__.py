"""Poems out and judged: writing them with a run or any model (generate), scoring files of them (score),
the base-vs-fine-tuned report (report) and the demo's showcase (showcase)."""
