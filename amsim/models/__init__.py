"""Stock Flax linen models for training with approximate multipliers.

Every product goes through ``lax.dot_general`` (Dense layers, attention) or ``lax.conv_general_dilated`` (Conv
layers), where :mod:`amsim.nn` intercepts it. Each model also takes ``dot_general`` / ``conv_general_dilated``
attributes (None: Flax's defaults) passed to every layer it creates, attention's two einsums included, to inject
an approximate op directly. All are called as ``model.apply(variables, x_nhwc, train=...)``.
"""

from ._lenet import LeNet5, LeNet300100
from ._registry import available, get, param_count
from ._resnet import BasicBlock, CifarResNet, ResNet18, ResNet20
from ._vit import EncoderBlock, ViTTiny

__all__ = [
    "get",
    "available",
    "param_count",
    "LeNet300100",
    "LeNet5",
    "ResNet20",
    "ResNet18",
    "CifarResNet",
    "BasicBlock",
    "ViTTiny",
    "EncoderBlock",
]
