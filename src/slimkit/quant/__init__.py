"""Quantization: LSQ uniform, SP2 and APoT quantizers, QAT/PTQ as a modifier, and ONNX int8 export."""

from slimkit.quant.levels import apot_levels, sp2_levels
from slimkit.quant.modifier import ApotConfig, QuantizeConfig, QuantizeModifier, Sp2Config, UniformConfig
from slimkit.quant.quantizers import LevelQuantizer, UniformQuantizer

__all__ = ["ApotConfig", "LevelQuantizer", "QuantizeConfig", "QuantizeModifier", "Sp2Config", "UniformConfig",
           "UniformQuantizer", "apot_levels", "sp2_levels"]
