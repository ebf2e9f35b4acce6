"""
The model ``M = R (x) K + B`` and its variance on torch tensors (private).

Owns what the noise models, the fit and the result share: the one boundary
between numpy/astropy objects and torch tensors (``_torch``: devices, data
types, conversions) and the model itself, written once (``_model``: FFT
lengths, kernel spectra, the valid-region convolution, the variance of the
target at a model). Nothing here is public.
"""

__all__ = []
