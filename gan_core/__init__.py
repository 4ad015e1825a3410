"""gan_core: the medgan engine (pure PyTorch; no Ray, KFP or MLflow imports)."""

__version__ = "0.1.0"
