"""Deprecated import path: the engine moved to `slimkit.runtime.engine` (form, export, profile). This module
keeps the names it had working, and says where each one lives now."""

import warnings

from slimkit.runtime.engine.artifact import export_folder
from slimkit.runtime.engine.export import export_openvino, openvino_core
from slimkit.runtime.engine.form import engine_form, runs_slimkit_operators
from slimkit.runtime.engine.profile import node_times, profile_openvino

__all__ = ["engine_form", "export_folder", "export_openvino", "node_times", "openvino_core", "profile_openvino",
           "runs_slimkit_operators"]

warnings.warn("slimkit.runtime.engine_ops is deprecated: import export_openvino and openvino_core from "
              "slimkit.runtime.engine.export, export_folder from slimkit.runtime.engine.artifact, engine_form and "
              "runs_slimkit_operators from slimkit.runtime.engine.form, node_times and profile_openvino from "
              "slimkit.runtime.engine.profile",
              DeprecationWarning, stacklevel=2)
