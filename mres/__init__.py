"""mres: multiresolution, coarse-to-fine training of CNNs."""

__version__ = "0.1.0"
