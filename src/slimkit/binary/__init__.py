"""Binary neural networks: binary layers with pluggable binarizers, and the XNOR, IR-Net, RBNN, ReCU and
SiMaN methods as modifiers."""

from slimkit.binary.binarizers import ActivationBinarizer, WeightBinarizer
from slimkit.binary.layers import BinaryConv2d, BinaryLinear, binarize_module
from slimkit.binary.methods import BinaryMethod, IrNet, Rbnn, Recu, Siman, Xnor

__all__ = ["ActivationBinarizer", "BinaryConv2d", "BinaryLinear", "BinaryMethod", "IrNet", "Rbnn", "Recu",
           "Siman", "WeightBinarizer", "Xnor", "binarize_module"]
