"""Binary neural networks: binary layers with pluggable binarizers, and the XNOR, IR-Net, RBNN, ReCU and
SiMaN methods as modifiers."""

from slimkit.binary.binarizers import ActivationBinarizer, WeightBinarizer
from slimkit.binary.layers import BinaryConv2d, BinaryLinear, binarize_module
from slimkit.binary.modifiers import (
    BinarizeConfig,
    BinaryMethod,
    IrNet,
    IrNetConfig,
    Rbnn,
    RbnnConfig,
    Recu,
    RecuConfig,
    Siman,
    SimanConfig,
    Xnor,
    XnorConfig,
)

__all__ = ["ActivationBinarizer", "BinarizeConfig", "BinaryConv2d", "BinaryLinear", "BinaryMethod", "IrNet",
           "IrNetConfig", "Rbnn", "RbnnConfig", "Recu", "RecuConfig", "Siman", "SimanConfig", "WeightBinarizer",
           "Xnor", "XnorConfig", "binarize_module"]
