"""Model layer: configs, torchvision ``MaskRCNN`` builders, checkpoints, data, training,
evaluation and the static-shape deploy graph."""
