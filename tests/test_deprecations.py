"""Old public names keep working after a rename or a move: each one warns (DeprecationWarning naming the new
home) and gives exactly the object the new name gives."""

import importlib

import pytest

import slimkit.formats

# (old module, old name, new module, new name)
ALIASES = [
    *[("slimkit.train.checkpoint", name, "slimkit.formats", name) for name in
      ("CHECKPOINT_FORMAT", "MODEL_FORMAT", "WEIGHTS_FORMAT", "atomic_save", "safe_load", "read_checkpoint")],
    # modifiers before the one <Name>Modifier scheme
    *[("slimkit.sparsity", old, "slimkit.sparsity", new) for old, new in (
        ("Pruner", "PruneModifier"), ("MagnitudePruner", "MagnitudeModifier"),
        ("GradualPruner", "GradualMagnitudeModifier"), ("SnipPruner", "SnipModifier"), ("SensePruner", "SenseModifier"),
        ("PatternPruner", "PatternModifier"), ("NMPruner", "NMModifier"), ("MovementPruner", "MovementModifier"),
        ("OptgPruner", "OptgModifier"))],
    ("slimkit.channels", "ChannelPruner", "slimkit.channels", "ChannelModifier"),
    *[("slimkit.binary", old, "slimkit.binary", new) for old, new in (
        ("BinaryMethod", "BinarizeModifier"), ("Xnor", "XnorModifier"), ("IrNet", "IrNetModifier"),
        ("Rbnn", "RbnnModifier"), ("Recu", "RecuModifier"), ("Siman", "SimanModifier"))],
    ("slimkit.distill", "Distiller", "slimkit.distill", "DistillModifier"),
]


@pytest.mark.parametrize(("old_module", "old", "new_module", "new"), ALIASES, ids=lambda v: str(v))
def test_an_old_name_warns_and_is_the_new_object(old_module, old, new_module, new):
    with pytest.warns(DeprecationWarning, match=rf"{old_module}\.{old} is deprecated; use {new_module}\.{new}"):
        found = getattr(importlib.import_module(old_module), old)
    assert found is getattr(importlib.import_module(new_module), new)


def test_from_import_of_an_old_name_warns():
    with pytest.warns(DeprecationWarning, match="slimkit.train.checkpoint.safe_load is deprecated"):
        from slimkit.train.checkpoint import safe_load
    assert safe_load is slimkit.formats.safe_load


@pytest.mark.parametrize("module", sorted({old_module for old_module, *_ in ALIASES}))
def test_a_name_that_never_existed_is_still_an_attribute_error(module):
    with pytest.raises(AttributeError, match=f"module '{module}' has no attribute 'no_such_name'"):
        importlib.import_module(module).no_such_name  # noqa: B018


def test_modifiers_follow_one_naming_scheme():
    """Every registered method's modifier is a `<Name>Modifier`, and old names stay out of `__all__`."""
    from slimkit.methods import _METHODS

    modifiers = {spec.modifier for kind in _METHODS.values() for spec in kind.values()}
    assert modifiers and all(m.__name__.endswith("Modifier") for m in modifiers), sorted(m.__name__ for m in modifiers)
    for old_module, old, *_ in ALIASES:
        assert old not in getattr(importlib.import_module(old_module), "__all__", ())


@pytest.mark.parametrize("function", ["slimkit.quant.onnx_export:export_onnx",
                                      "slimkit.runtime.engine.export:export_openvino"])
def test_the_old_input_shape_keyword_warns_and_writes_what_example_writes(tmp_path, function):
    import torch
    from torch import nn

    module, name = function.split(":")
    export = getattr(importlib.import_module(module), name)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    torch.manual_seed(0)
    suffix = ".onnx" if name == "export_onnx" else ".xml"
    export(model, tmp_path / f"new{suffix}", example=(1, 8, 8))
    with pytest.warns(DeprecationWarning, match=rf"{name}\(\): input_shape= is deprecated; pass example="):
        export(model, tmp_path / f"old{suffix}", input_shape=(1, 8, 8))
    written = ".onnx" if name == "export_onnx" else ".bin"  # the IR's .xml names its own files
    assert (tmp_path / f"old{written}").read_bytes() == (tmp_path / f"new{written}").read_bytes()
    with pytest.raises(TypeError, match="got both input_shape="):
        export(model, tmp_path / f"both{suffix}", example=(1, 8, 8), input_shape=(1, 8, 8))
