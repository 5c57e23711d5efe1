"""The latency cache: entries round-trip per CPU identity and key; a damaged, foreign or partial entry is never
trusted (the layer is timed again), and entries are written atomically."""

from __future__ import annotations

import json

import pytest

from slimkit.target.cache import LatencyCache, Timing

KEY = {"layer": {"type": "conv", "in": 16, "out": 16}, "batch": 4, "threads": 1}


def test_an_entry_round_trips_with_its_times_and_reasons(tmp_path):
    cache = LatencyCache(tmp_path, "cpu A build 1")
    cache.put(KEY, {"fp32 w16": Timing(1.5, 0.1), "binary w16": "not timed: grouped"})
    assert cache.get(KEY, {"fp32 w16", "binary w16"}) == {"fp32 w16": Timing(1.5, 0.1),
                                                          "binary w16": "not timed: grouped"}
    assert cache.get(KEY, {"fp32 w16", "int8 w16"}) is None  # a form never timed: time them again
    assert cache.get({**KEY, "batch": 8}, {"fp32 w16"}) is None
    assert LatencyCache(tmp_path, "cpu B build 1").get(KEY, {"fp32 w16"}) is None  # another CPU's tables
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("damage", [
    lambda text: text[: len(text) // 2],  # torn
    lambda text: "not json",
    lambda text: text.replace('"median": 1.5', '"median": -1.5'),
    lambda text: text.replace('"median": 1.5', '"median": "1.5"'),
    lambda text: text.replace('"iqr": 0.1', '"iqr": NaN'),
    lambda text: text.replace('"slimkit-latency/1"', '"slimkit-latency/0"'),
    lambda text: text.replace('"in": 16', '"in": 32'),  # the entry of another key under this key's name
    lambda text: text.replace("cpu A", "cpu B"),
])
def test_a_damaged_entry_is_ignored(tmp_path, damage):
    cache = LatencyCache(tmp_path, "cpu A build 1")
    cache.put(KEY, {"fp32 w16": Timing(1.5, 0.1)})
    (path,) = cache.folder.glob("*.json")
    path.write_text(damage(path.read_text()))
    assert cache.get(KEY, {"fp32 w16"}) is None
    cache.put(KEY, {"fp32 w16": Timing(2.0, 0.2)})  # timed again and rewritten
    assert cache.get(KEY, {"fp32 w16"}) == {"fp32 w16": Timing(2.0, 0.2)}
    assert json.loads(path.read_text())["forms"]["fp32 w16"] == {"median": 2.0, "iqr": 0.2}
