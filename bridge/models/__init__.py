"""Model zoo: ResNets for small images with per-block skip weights (linear or not), and the
train-time (over-parameterized) blocks that re-parameterization papers merge by hand."""
from .reparam import (ACBlock, ConvBN, DBBBlock, DiracBlock, MobileOneBlock, ReLUBasicBlock,
                      ReLUResNet, RepVGGBlock, ReparamNet, SqueezeExcite, acnet_net, dbb_net,
                      deploy, diracnet_net, mobileone_net, randomize_bn_, repvgg_net,
                      resnet18_relu)
from .resnet import (PADDING_MODES, BasicBlock, ResNet, calibrate_batchnorm_,
                     randomize_batchnorm_, remove_zero_skips_, resnet18, resnet34, resnet_tiny,
                     set_skip_weight_)
from .resnet import (BLOCKS, MODELS, Bottleneck, ResidualBlock, build_resnet, fix_unit_skips_,
                     resnet50, resnet_small, skip_weights)

__all__ = ["PADDING_MODES", "BasicBlock", "ResNet", "calibrate_batchnorm_",
           "randomize_batchnorm_", "remove_zero_skips_", "resnet18", "resnet34", "resnet_tiny",
           "set_skip_weight_", "ConvBN", "RepVGGBlock", "ACBlock", "DBBBlock", "MobileOneBlock",
           "DiracBlock", "SqueezeExcite", "ReparamNet", "repvgg_net", "acnet_net", "dbb_net",
           "mobileone_net", "diracnet_net", "deploy", "ReLUBasicBlock", "ReLUResNet",
           "resnet18_relu", "randomize_bn_", "BLOCKS", "MODELS", "Bottleneck", "ResidualBlock",
           "build_resnet", "fix_unit_skips_", "resnet50", "resnet_small", "skip_weights"]
