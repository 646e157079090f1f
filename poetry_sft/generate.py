"""`python -m poetry_sft.generate` from older scripts: the same as `poetry-sft generate`."""

if __name__ == "__main__":
    from poetry_sft.cli import run_verb

    raise SystemExit(run_verb("generate"))
