"""`python -m poetry_sft.merge` from older scripts: the same as `poetry-sft merge`."""

if __name__ == "__main__":
    from poetry_sft.cli import run_verb

    raise SystemExit(run_verb("merge"))
