"""`python -m poetry_sft.score` from older scripts: the same as `poetry-sft score`."""

if __name__ == "__main__":
    from poetry_sft.cli import run_verb

    raise SystemExit(run_verb("score"))
