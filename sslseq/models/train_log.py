"""``<exp_dir>/log/train.jsonl``: the trainer's metrics, one JSON record per line (part of an experiment
dir, so it lives in models/, below both the trainer that writes it and the reports that read it).

Training records hold ``step``, ``epoch``, ``loss``, ``lr``, ``grad_norm`` and the model's logs
(e.g. ``acc_m``); validation records hold ``step``, ``epoch`` and the ``valid_*`` metrics.
The trainer appends (:class:`JsonLog`); plots and reports read (:func:`read_train_log`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sslseq.utils import atomic_write_text

__all__ = ["LOG", "JsonLog", "read_train_log"]

LOG = Path("log") / "train.jsonl"


class JsonLog:
    """Append-only JSON lines; on resume, lines after the resumed step are dropped."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file():
            kept = []
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) <= resume_step:
                        kept.append(line)
                except json.JSONDecodeError:
                    pass  # a line cut by a kill
            atomic_write_text(path, "".join(f"{line}\n" for line in kept))
        self.f = open(path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self.f.write(json.dumps(record) + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def read_train_log(exp_dir: Path) -> list[dict[str, Any]] | None:
    """The records of ``exp_dir``'s log in file order, or None when there is no log. Lines that
    are not JSON objects with a ``step`` (a line cut by a kill) are skipped."""
    path = Path(exp_dir) / LOG
    if not path.is_file():
        return None
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), (int, float)):
            out.append(rec)
    return out
