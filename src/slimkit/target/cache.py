"""Latency tables kept on disk, per CPU identity: what a layer of one shape took in each form on this CPU, at
one batch size and thread count, so a second run (another target, another model with the same layer shapes)
times nothing again.

The folder is the kernel tuner's ($SLIMKIT_CACHE_DIR, else ~/.cache/slimkit: engine/build.cache_dir), under
`latency/<digest of the CPU identity, the operator library build and OpenVINO's version>`: a table measured on
one CPU, build or engine is never read under another. Each entry is one file per layer shape, batch and
threads, written atomically, holding each form's time or why it could not be timed; an entry that cannot be
read, is of another format or key, or holds a time that is not a finite positive number is ignored, and the
layer is timed again and the entry rewritten.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimkit.files import atomic_write_text

FORMAT = "slimkit-latency/1"


@dataclass(frozen=True)
class Timing:
    """A form's time in ms: the median of interleaved samples and their interquartile range (the noise)."""

    median: float
    iqr: float

    def to_dict(self) -> dict[str, float]:
        return {"median": self.median, "iqr": self.iqr}


Result = Timing | str  # a form's time, or why it could not be timed


def _result(value: Any) -> Result | None:
    """A stored result read back, or None for anything that is neither a valid time nor a reason."""
    if isinstance(value, dict) and set(value) == {"error"} and isinstance(value["error"], str):
        return value["error"]
    if not isinstance(value, dict) or set(value) != {"median", "iqr"}:
        return None
    median, iqr = value["median"], value["iqr"]
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in (median, iqr))
    return Timing(float(median), float(iqr)) if numbers and median > 0 and iqr >= 0 else None


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class LatencyCache:
    """Entries under `folder`/latency/<identity digest>; `identity` names the CPU, library build and engine."""

    def __init__(self, folder: Path, identity: str):
        self.identity = identity
        self.folder = folder / "latency" / _digest(identity)

    def _path(self, key: dict[str, Any]) -> Path:
        return self.folder / f"{_digest(json.dumps(key, sort_keys=True))}.json"

    def get(self, key: dict[str, Any], forms: set[str]) -> dict[str, Result] | None:
        """The cached times of `forms` for `key`, or None when the entry is missing, damaged or lacks a form."""
        try:
            entry = json.loads(self._path(key).read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            return None
        if not isinstance(entry, dict) or entry.get("format") != FORMAT or entry.get("identity") != self.identity \
                or entry.get("key") != json.loads(json.dumps(key)) or not isinstance(entry.get("forms"), dict):
            return None
        found = {name: _result(value) for name, value in entry["forms"].items()}
        if not forms <= found.keys() or any(found[name] is None for name in forms):
            return None
        return {name: result for name in forms if (result := found[name]) is not None}

    def put(self, key: dict[str, Any], results: dict[str, Result]) -> None:
        forms = {name: {"error": r} if isinstance(r, str) else r.to_dict() for name, r in results.items()}
        entry = {"format": FORMAT, "identity": self.identity, "key": key, "forms": forms}
        atomic_write_text(self._path(key), json.dumps(entry, indent=1))
