"""Image features: image loading, the embedded EfficientNet-Lite0, local CLIP folders, dataset feature tables."""
