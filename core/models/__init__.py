"""The networks: ImageNet backbones and their cuts, the model builders, the family registry, the
search space, and the inference engine."""
