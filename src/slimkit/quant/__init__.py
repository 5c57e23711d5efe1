"""Quantization: LSQ uniform, SP2 and APoT quantizers, QAT/PTQ as a modifier, and ONNX int8 export."""

from slimkit.quant.levels import apot_levels, sp2_levels
from slimkit.quant.methods import Quantizer
from slimkit.quant.quantizers import LevelQuantizer, UniformQuantizer

__all__ = ["LevelQuantizer", "Quantizer", "UniformQuantizer", "apot_levels", "sp2_levels"]
