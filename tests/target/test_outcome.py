"""Reading the run's measurement back: an artifact's node is counted under the layer whose module path its
exported name passes through."""

from __future__ import annotations

from slimkit.target.outcome import module_paths, node_of_layer

LAYERS = ["conv0", "body.conv1", "layer1.0.conv1", "layer1.1.conv1", "fc"]


def test_an_exported_node_is_found_under_its_layer():
    assert "layer1.0.conv1" in module_paths("/layer1/layer1.0/conv1/Conv/WithoutBiases")
    assert "conv1" in module_paths("/conv1/Conv/WithoutBiases")
    assert "conv1" not in module_paths("input_abcd_acdb_/conv1/Conv/WithoutBiases")  # a reorder before it
    assert "layer1.0.conv1" in module_paths("/layer1.0.conv1/layer/Conv")  # a torch.fx graph's flat names


def test_a_node_is_a_layers_by_its_path_or_by_a_tail_no_other_layer_has():
    assert node_of_layer("body.conv1", "body.conv1", LAYERS)  # slimkit's operator node, named after its layer
    assert node_of_layer("/body/conv1/Conv", "body.conv1", LAYERS)
    assert node_of_layer("/conv0/Conv/WithoutBiases", "conv0", LAYERS)
    assert not node_of_layer("/conv1/Conv", "layer1.0.conv1", LAYERS)  # which block's conv1? not said
    assert not node_of_layer("/conv1/Conv", "body.conv1", LAYERS)  # nor for this one: three layers end with conv1
    assert node_of_layer("/conv1/Conv", "body.conv1", ["conv0", "body.conv1", "fc"])
    assert not node_of_layer("/int8_in_x/QuantizeLinear", "conv0", LAYERS)
