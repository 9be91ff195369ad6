"""Model zoo: ResNets for small images with per-block skip weights (linear or not)."""
from .resnet import (PADDING_MODES, BasicBlock, ResNet, calibrate_batchnorm_,
                     randomize_batchnorm_, remove_zero_skips_, resnet18, resnet34, resnet_tiny,
                     set_skip_weight_)

__all__ = ["PADDING_MODES", "BasicBlock", "ResNet", "calibrate_batchnorm_",
           "randomize_batchnorm_", "remove_zero_skips_", "resnet18", "resnet34", "resnet_tiny",
           "set_skip_weight_"]
