"""`python -m poetry_sft.report` from older scripts: the same as `poetry-sft report`."""

if __name__ == "__main__":
    from poetry_sft.cli import run_verb

    raise SystemExit(run_verb("report"))
