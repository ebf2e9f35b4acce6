"""The shape of a fitted kernel, as the guard judges it (private).

Owns the measures of `astro_dia.fitting._guard` that read the kernel alone:
the noise of its border (`kernel_border_noise`), the share of its mass
beyond that noise that is negative (`kernel_negative_fraction`), its rms
width (`kernel_width`) and the depth of its deepest negative lobe once
smoothed (`kernel_lobe_depth`), with the thresholds they use. The guard
turns them into the ``DECONVOLVES`` warning and the ``DIA_KNEG``,
``DIA_KWID`` and ``DIA_KLOB`` cards.
"""

import numpy as np
from astropy.stats import mad_std
from scipy import ndimage

__all__ = []

#: A kernel whose smoothed peak is below this many times its noise has no shape to judge.
KERNEL_SIGNAL_SIGMA = 10.0

#: Kernel pixels more negative than this many times the noise of its border count.
KERNEL_NOISE_SIGMA = 3.0

#: Width of the kernel's border whose scatter is the kernel's noise.
KERNEL_BORDER = 2


def kernel_border_noise(kernel):
    """
    The noise of ``kernel``'s pixels: the robust scatter of its border.

    A kernel of the right size has no signal in its `KERNEL_BORDER` outer
    rows and columns; 0 for a kernel too small to have such a border.
    """
    kernel = np.asarray(kernel, float)
    size = kernel.shape[-1]
    if size <= 2 * KERNEL_BORDER + 1:
        return 0.0
    border = np.ones(kernel.shape, bool)
    border[KERNEL_BORDER:-KERNEL_BORDER, KERNEL_BORDER:-KERNEL_BORDER] = False
    return float(mad_std(kernel[border]))


def kernel_negative_fraction(kernel):
    """
    The share of ``kernel``'s mass beyond its noise that is negative.

    Pixels beyond ``KERNEL_NOISE_SIGMA`` times `kernel_border_noise` count:
    ``N / (N + S)`` with ``N`` the magnitude of the negative ones' sum and
    ``S`` the positive ones'. A kernel that only blurs has none (0); one
    whose negative mass equals its sum P has a third.

    Parameters
    ----------
    kernel : (K, K) ndarray

    Returns
    -------
    fraction : float
        In [0, 1]; 0 when no pixel is beyond the noise.
    """
    kernel = np.asarray(kernel, float)
    beyond = np.abs(kernel) > KERNEL_NOISE_SIGMA * kernel_border_noise(kernel)
    negative = float(-kernel[beyond & (kernel < 0)].sum())
    positive = float(kernel[beyond & (kernel > 0)].sum())
    return negative / (negative + positive) if negative + positive > 0 else 0.0


def kernel_width(kernel):
    """
    The rms width of ``kernel`` per axis, in pixels, from its second central moment.

    Second moments add under convolution, so the target's PSF has the
    reference's second moment plus this one squared: 0 for a kernel that
    only scales and shifts, negative (returned as ``-sqrt(|m|)``) for one
    that sharpens.

    Parameters
    ----------
    kernel : (K, K) ndarray

    Returns
    -------
    width : float
        ``sign(m) sqrt(|m|)`` with ``m`` the mean of the x and y central
        second moments of ``kernel`` over its sum; NaN for a non-positive
        sum.
    """
    kernel = np.asarray(kernel, float)
    total = float(kernel.sum())
    if not total > 0:
        return float("nan")
    y, x = np.indices(kernel.shape, dtype=float)
    moments = []
    for axis in (x, y):
        centre = float((kernel * axis).sum()) / total
        moments.append(float((kernel * (axis - centre) ** 2).sum()) / total)
    m = 0.5 * sum(moments)
    return float(np.sign(m) * np.sqrt(abs(m)))


def kernel_lobe_depth(kernel):
    """
    Depth of the deepest negative lobe of ``kernel`` smoothed over 3 x 3 pixels, over its peak.

    Parameters
    ----------
    kernel : (K, K) ndarray

    Returns
    -------
    depth : float
        ``max(0, -min(S)) / max(S)`` for the smoothed kernel ``S``; 0 when
        the smoothed peak is not `KERNEL_SIGNAL_SIGMA` times the kernel's
        noise (`kernel_border_noise`): a kernel without signal (no stars,
        a constant target) has no shape to judge.
    """
    smooth = ndimage.uniform_filter(np.asarray(kernel, float), 3, mode="constant")
    peak = float(smooth.max())
    if not peak > KERNEL_SIGNAL_SIGMA * kernel_border_noise(kernel):
        return 0.0
    return max(0.0, -float(smooth.min())) / peak
