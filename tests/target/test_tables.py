"""Latency tables: a layer's forms are exported as the deployment exports them (OpenVINO's own kernels for the
dense forms, slimkit's operators for the sparse and binary ones), timed, and read back from the cache the second
time without timing anything."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn

from slimkit.target import tables
from slimkit.target.cache import LatencyCache, Timing
from slimkit.target.forms import LayerKind

pytest.importorskip("openvino")

FORMS = [(LayerKind("fp32"), 16), (LayerKind("fp32"), 8), (LayerKind("int8"), 16),
         (LayerKind("sparse_int8", 0.75), 16), (LayerKind("binary"), 16)]


def test_each_form_runs_its_own_kernel_and_the_second_call_reads_the_cache(tmp_path, monkeypatch):
    exported = {}
    export = tables.export_openvino

    def recording(model, path, *args, **kwargs):
        info = export(model, path, *args, **kwargs)
        exported[Path(path).parent.name] = Path(path).read_text()
        return info

    monkeypatch.setattr(tables, "export_openvino", recording)
    cache = LatencyCache(tmp_path / "cache", "this cpu")
    conv = nn.Conv2d(16, 16, 3, padding=1, bias=False)
    kwargs = dict(batch=2, threads=1, repeats=3, binary="xnor", cache=cache, folder=tmp_path)
    first = tables.time_forms(conv, (16, 8, 8), FORMS, **kwargs)
    assert set(first) == {tables.form_label(k, w) for k, w in FORMS}
    assert all(isinstance(t, Timing) and t.median > 0 for t in first.values()), first
    xml = [exported[f"form{i}"] for i in range(len(FORMS))]
    assert not any("slimkit" in text for text in xml[:2])  # fp32: OpenVINO's own convolution
    assert "FakeQuantize" in xml[2] and "QuantSparseConv2d" not in xml[2]  # int8: OpenVINO's own int8
    assert 'type="QuantSparseConv2d"' in xml[3] and 'type="BinaryConv2d"' in xml[4]
    assert not list(tmp_path.glob(".slimkit-tables-*"))

    def no_timing(*args, **kwargs):
        raise AssertionError("the cache held every form; nothing should be timed")

    monkeypatch.setattr(tables, "compare_latency", no_timing)
    assert tables.time_forms(nn.Conv2d(16, 16, 3, padding=1, bias=False), (16, 8, 8), FORMS, **kwargs) == first
    with pytest.raises(AssertionError, match="nothing should be timed"):  # another thread count: timed again
        tables.time_forms(conv, (16, 8, 8), FORMS, **{**kwargs, "threads": 2})
