"""Files and directories that appear whole or not at all: a reader, a crash or a second process never
sees half of one. The foundation's file helpers, used by every layer that writes (data cache, random
models, runs, merges, exports)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def write_json(path: Path, payload: Any) -> None:
    """Atomic: a reader (or a crash) never sees half a file, so metrics.json really means finished."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@contextmanager
def staged_directory(target: Path, complete_marker: str) -> Iterator[Path]:
    """Build a directory beside `target` and rename it into place when the block succeeds: a reader (or a
    concurrent builder) never sees half of it. Losing a race to another builder is fine: theirs is as good."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".building-"))
    try:
        yield staging
        os.replace(staging, target)
    except OSError:
        if not (target / complete_marker).exists():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
