"""Old public names keep working after a rename or a move: each one warns (DeprecationWarning naming the new
home) and gives exactly the object the new name gives."""

import importlib

import pytest

import slimkit.formats

# (old module, old name, new module, new name)
ALIASES = [
    *[("slimkit.train.checkpoint", name, "slimkit.formats", name) for name in
      ("CHECKPOINT_FORMAT", "MODEL_FORMAT", "WEIGHTS_FORMAT", "atomic_save", "safe_load", "read_checkpoint")],
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


def test_a_name_that_never_existed_is_still_an_attribute_error():
    module = importlib.import_module("slimkit.train.checkpoint")
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        module.no_such_name  # noqa: B018
