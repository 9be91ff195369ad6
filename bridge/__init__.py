"""laurentnet.bridge — PyTorch models, checkpoints, the demo and the command line."""
