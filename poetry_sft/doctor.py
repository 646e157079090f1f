"""`python -m poetry_sft.doctor` from older scripts: the same as `poetry-sft doctor`."""

if __name__ == "__main__":
    from poetry_sft.cli import run_verb

    raise SystemExit(run_verb("doctor"))
