"""Reading the run's measurement back: an artifact's node is counted under the layer whose module path its
exported name passes through."""

from __future__ import annotations

from slimkit.target.outcome import module_paths


def test_an_exported_node_is_found_under_its_layer():
    assert "layer1.0.conv1" in module_paths("/layer1/layer1.0/conv1/Conv/WithoutBiases")
    assert "conv1" in module_paths("/conv1/Conv/WithoutBiases")
    assert "conv1" not in module_paths("input_abcd_acdb_/conv1/Conv/WithoutBiases")  # a reorder before it
    assert "layer1.0.conv1" in module_paths("/layer1.0.conv1/layer/Conv")  # a torch.fx graph's flat names
