"""Deprecated: the checkpoint and model-file formats live in `slimkit.formats` (a low tier, so that the runtime
and persistence read them without importing train/). The old names still work, with a DeprecationWarning."""

from slimkit.deprecation import deprecated_aliases

__getattr__ = deprecated_aliases(__name__, {name: ("slimkit.formats", name) for name in (
    "CHECKPOINT_FORMAT", "MODEL_FORMAT", "WEIGHTS_FORMAT", "atomic_save", "safe_load", "read_checkpoint")})
