"""`python -m poetry_sft.sweep_report` from older scripts: the same as `poetry-sft sweep-report`."""

if __name__ == "__main__":
    from poetry_sft.cli import run_verb

    raise SystemExit(run_verb("sweep-report"))
