"""Binary neural networks: binary layers with pluggable binarizers, and the XNOR, IR-Net, RBNN, ReCU and
SiMaN methods as modifiers."""

from slimkit.binary.binarizers import ActivationBinarizer, WeightBinarizer
from slimkit.binary.layers import BinaryConv2d, BinaryLinear, binarize_module
from slimkit.binary.modifiers import (
    BinarizeConfig,
    BinarizeModifier,
    IrNetConfig,
    IrNetModifier,
    RbnnConfig,
    RbnnModifier,
    RecuConfig,
    RecuModifier,
    SimanConfig,
    SimanModifier,
    XnorConfig,
    XnorModifier,
)
from slimkit.deprecation import deprecated_aliases

__all__ = [
    "ActivationBinarizer",
    "BinarizeConfig",
    "BinarizeModifier",
    "BinaryConv2d",
    "BinaryLinear",
    "IrNetConfig",
    "IrNetModifier",
    "RbnnConfig",
    "RbnnModifier",
    "RecuConfig",
    "RecuModifier",
    "SimanConfig",
    "SimanModifier",
    "WeightBinarizer",
    "XnorConfig",
    "XnorModifier",
    "binarize_module",
]

# the names before <Name>Modifier became the one scheme (see docs/design.md, Modifiers)
__getattr__ = deprecated_aliases(__name__, {
    "BinaryMethod": ("slimkit.binary", "BinarizeModifier"),
    "Xnor": ("slimkit.binary", "XnorModifier"),
    "IrNet": ("slimkit.binary", "IrNetModifier"),
    "Rbnn": ("slimkit.binary", "RbnnModifier"),
    "Recu": ("slimkit.binary", "RecuModifier"),
    "Siman": ("slimkit.binary", "SimanModifier"),
})
