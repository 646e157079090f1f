"""`python -m poetry_sft.export` from older scripts: the same as `poetry-sft export`."""

if __name__ == "__main__":
    from poetry_sft.cli import run_verb

    raise SystemExit(run_verb("export"))
