"""normbench: what normalization layers do to training, measured."""

__version__ = "0.1.0"
