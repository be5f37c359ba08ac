"""mtlweight: loss weighting for multi-task training in PyTorch."""

__version__ = "0.1.0"
