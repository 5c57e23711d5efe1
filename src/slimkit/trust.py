"""Which code a recipe may make slimkit run. An import path in a recipe (`model.factory`, `data.factory`,
`objective.loss`, `objective.metric`) is code: importing its module runs the module, and calling it runs the
function with the recipe's arguments (`os:system` with `kwargs: {command: ...}` is a shell). A recipe is a
file that may come from anyone (a shared run folder, a checkpoint's saved copy), so, as with Hugging Face's
`trust_remote_code`, slimkit imports the code a recipe names only when the user says so: `--trust-code` on
the command line, `trust_code=True` in Python, or the path's package on the user's allow-list
(`SLIMKIT_TRUSTED_MODULES`). slimkit's own modules are no exception: their functions called with a
recipe's arguments can write files.

Objects the user hands slimkit in Python (a model, a Dataset, a loss function, a config built in code) are
the user's own code and are trusted as such.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Mapping
from typing import Any

from slimkit.errors import SlimkitError

TRUSTED_MODULES_ENV = "SLIMKIT_TRUSTED_MODULES"
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


class CodeTrust(enum.Enum):
    """How far a recipe being read is trusted to name code."""

    ALL = "all"  # the user said so (--trust-code, trust_code=True): any import path is imported
    ALLOW_LIST = "allow-list"  # the default: only packages in SLIMKIT_TRUSTED_MODULES are imported
    NONE = "none"  # a saved recipe read for its settings: import paths are checked for form, never imported


def trusted_modules() -> tuple[str, ...]:
    """The packages the user allows recipes to name, from SLIMKIT_TRUSTED_MODULES (comma-separated module
    names; each allows itself and its submodules)."""
    entries = [e.strip() for e in os.environ.get(TRUSTED_MODULES_ENV, "").split(",") if e.strip()]
    bad = [e for e in entries if not _MODULE_NAME.fullmatch(e)]
    if bad:
        raise SlimkitError(f"{TRUSTED_MODULES_ENV}: {bad[0]!r} is not a module name; give comma-separated "
                           f"packages such as 'mypkg,otherpkg'")
    return tuple(entries)


def is_allow_listed(module: str) -> bool:
    """Whether `module` is a package of SLIMKIT_TRUSTED_MODULES or inside one."""
    return any(module == entry or module.startswith(entry + ".") for entry in trusted_modules())


def trust_of(context: Mapping[str, Any] | None) -> CodeTrust:
    """The trust a validation runs under: the recipe reader's (pydantic's validation context), or ALL for a
    config built in Python, whose strings are the user's own code."""
    return context.get("code_trust", CodeTrust.ALL) if context else CodeTrust.ALL


def validation_context(trust: CodeTrust) -> dict[str, CodeTrust]:
    """The pydantic validation context that makes a config's import paths follow `trust` (see trust_of)."""
    return {"code_trust": trust}


def context_for(trust_code: bool) -> dict[str, CodeTrust]:
    """The validation context of a recipe read with or without --trust-code / trust_code=True."""
    return validation_context(CodeTrust.ALL if trust_code else CodeTrust.ALLOW_LIST)


def may_import(module: str, path: str, key: str, trust: CodeTrust) -> bool:
    """Whether the module of import path `path` (at recipe key `key`) may be imported under `trust`: True
    under ALL or for an allow-listed package, False under NONE (check the form only); otherwise a ValueError
    naming the key, the module and both ways to allow it."""
    if trust is CodeTrust.NONE:
        return False
    if trust is CodeTrust.ALL or is_allow_listed(module):
        return True
    top = module.split(".")[0]
    raise ValueError(f"{key}: {path!r} names code (module {module!r}), and slimkit runs code a recipe names only "
                     f"when you say so: if you trust this recipe, pass --trust-code (command line) or "
                     f"trust_code=True (Python), or add {top!r} to {TRUSTED_MODULES_ENV} (comma-separated "
                     f"packages recipes may name)")
