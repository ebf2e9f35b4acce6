"""
The fitted kernel as header cards of a difference image (private).

`~astro_dia.subtract_reference` returns a `~astropy.nddata.CCDData`, not the
fit result, so that it chains like a ccdproc step. Photometry on that image
still needs the kernel (the target PSF is the reference PSF convolved with
it), so the kernel goes into the header, where it survives
``CCDData.write`` and ``CCDData.read``:

``DIA_KNUM``
    Number of kernel values recorded, ``n_terms * K**2`` (``n_terms = 1``
    for a constant kernel). Its presence marks a header with a kernel.
``DIAK0001``, ``DIAK0002``, ...
    The values, 1-based, in C order of the ``(K, K)`` kernel, or of the
    ``(n_terms, K, K)`` term kernels (``result.kernel_terms``, in the order
    of `~astro_dia.background.polynomial_terms`) of a spatially varying one.
    Each is the Python ``repr`` of the float64 value, as a string: astropy
    writes numeric cards with at most 20 characters, which loses the last
    digits of values such as ``-1.3031572316043609e-28``.
``DIA_NX``, ``DIA_NY``
    With ``DIA_KDEG > 0`` only: the image size that defines the normalised
    coordinates of the kernel polynomial.
``DPCViijj``
    With ``DIA_KDEG > 0``, errors computed and P not held constant only:
    the covariance of the scale factors ``sum(kernel_terms[i])`` and
    ``sum(kernel_terms[j])`` (``i <= j``, 0-based), from which sigma_P at
    any position follows (as `~astro_dia.DifferenceResult.scale_factor_error_at`).

They are read with the existing ``DIA_KSZ`` (K), ``DIA_KDEG``,
``DIA_CSCL``, ``DIA_P`` and ``DIA_PERR`` cards.
"""

import math
import re

import numpy as np
from astropy.io import fits

from . import _varying_kernel as varying_kernel
from ..background import basis_at, polynomial_terms

__all__ = []

COUNT_KEY = "DIA_KNUM"
SIZE_KEYS = ("DIA_NX", "DIA_NY")
_PIXEL = "DIAK{:04d}"
_COVARIANCE = "DPCV{:02d}{:02d}"
_OWN_KEY = re.compile(r"^(DIAK\d+|DPCV\d+|DIA_KNUM|DIA_NX|DIA_NY)$")


def kernel_cards(result):
    """
    The header cards that record a fit's kernel.

    Parameters
    ----------
    result : `~astro_dia.DifferenceResult`
        The fit. It is not modified.

    Returns
    -------
    cards : list of (str, object, str)
        ``(keyword, value, comment)``, for `astro_dia.result._provenance.stamp`.
    """
    degree = int(getattr(result, "kernel_degree", 0) or 0)
    varying = degree > 0 and getattr(result, "kernel_terms", None) is not None
    values = np.asarray(result.kernel_terms if varying else result.kernel, dtype=float)
    cards = [(COUNT_KEY, int(values.size), "kernel values in DIAKnnnn cards (C order)")]
    if varying:
        ny, nx = result.difference.shape
        cards += [("DIA_NX", int(nx), "image width of the kernel polynomial"),
                  ("DIA_NY", int(ny), "image height of the kernel polynomial")]
    for index, (position, value) in enumerate(np.ndenumerate(values), start=1):
        where = ",".join(str(i) for i in position)
        cards.append((_PIXEL.format(index), repr(float(value)), f"kernel[{where}]"))
    covariance = _scale_covariance(result) if varying else None
    if covariance is not None:
        n_terms = covariance.shape[0]
        for i in range(n_terms):
            for j in range(i, n_terms):
                cards.append((_COVARIANCE.format(i, j), repr(float(covariance[i, j])),
                              f"cov(P_{i}, P_{j}) of kernel terms"))
    return cards


def _scale_covariance(result):
    """Covariance of the term sums ``sum(kernel_terms[j])``, or None when not needed."""
    covariance = getattr(result, "covariance", None)
    if covariance is None or getattr(result, "constant_scale", False):
        return None
    n_terms, pixels = len(result.kernel_terms), np.asarray(result.kernel).size
    block = np.asarray(covariance, dtype=float)[:n_terms * pixels, :n_terms * pixels]
    return block.reshape(n_terms, pixels, n_terms, pixels).sum(axis=(1, 3))


def remove_kernel_cards(meta):
    """Delete kernel cards (e.g. of an earlier subtraction) from ``meta`` in place."""
    for key in [key for key in meta.keys() if _OWN_KEY.match(str(key).upper())]:
        del meta[key]
    return meta


class HeaderKernel:
    """
    A fit's kernel and scale factor as recorded in a header.

    It answers the questions photometry asks of a
    `~astro_dia.DifferenceResult`: ``kernel``, ``kernel_terms``,
    ``scale_factor``, ``scale_factor_error``, `kernel_at`,
    `scale_factor_at` and `scale_factor_error_at`.
    """

    def __init__(self, kernel_terms, kernel_degree, constant_scale, scale_factor,
                 scale_factor_error, shape, scale_covariance):
        self.kernel_degree = int(kernel_degree)
        self.kernel = kernel_terms[0]
        self.kernel_terms = kernel_terms if self.kernel_degree > 0 else None
        self.constant_scale = bool(constant_scale)
        self.scale_factor = float(scale_factor)
        self.scale_factor_error = scale_factor_error
        self.shape = shape
        self.scale_covariance = scale_covariance

    def _term_values(self, x, y):
        return basis_at(self.shape, self.kernel_degree, x, y)

    def kernel_at(self, x, y):
        """The kernel at one 0-based pixel position, as `DifferenceResult.kernel_at`."""
        return varying_kernel.kernel_at(self.kernel, self.kernel_terms, self.kernel_degree,
                                        self.shape, x, y)

    def scale_factor_at(self, x, y):
        """P at pixel positions, as `DifferenceResult.scale_factor_at`."""
        return varying_kernel.scale_factor_at(self.scale_factor, self.kernel_terms,
                                              self.kernel_degree, self.shape, x, y)

    def scale_factor_error_at(self, x, y):
        """sigma_P at pixel positions (None when unknown), as `DifferenceResult`'s."""
        shape = np.broadcast(np.asarray(x), np.asarray(y)).shape
        if self.kernel_terms is None or self.constant_scale or self.scale_covariance is None:
            if self.scale_factor_error is None:
                return None
            values = np.full(shape, self.scale_factor_error)
        else:
            n_terms = len(self.kernel_terms)
            terms = self._term_values(x, y).reshape(n_terms, -1)
            variance = np.einsum("in,ij,jn->n", terms, self.scale_covariance, terms)
            values = np.sqrt(np.maximum(variance, 0.0)).reshape(shape)
        return float(values) if values.ndim == 0 else values


def kernel_from_header(meta, shape=None):
    """
    Read the kernel that `kernel_cards` recorded in a header.

    Parameters
    ----------
    meta : `~astropy.io.fits.Header` or dict
        The ``meta`` of a difference image. It is not modified.
    shape : (int, int), optional
        The image's shape; checked against ``DIA_NX``/``DIA_NY`` of a
        spatially varying kernel.

    Returns
    -------
    fit : `HeaderKernel` or None
        None when ``meta`` holds no kernel (no ``DIA_KNUM`` card).

    Raises
    ------
    ValueError
        If the cards are incomplete or inconsistent, or the image's shape is
        not that of the fit.
    """
    if meta is None:
        return None
    keys = {str(key).upper(): key for key in meta.keys()}
    if COUNT_KEY not in keys:
        return None

    def value(key, default=KeyError):
        if key not in keys:
            if default is KeyError:
                raise ValueError(f"the header records a kernel ({COUNT_KEY}) but has no {key} "
                                 "card; it was edited since astro_dia wrote it: pass kernel= "
                                 "and scale_factor= explicitly")
            return default
        item = meta[keys[key]]
        return item[0] if isinstance(item, tuple) else item

    def number(key, default=KeyError):
        if key not in keys and default is not KeyError:
            return default
        item = value(key)
        try:
            result = float(item) if not isinstance(item, bool) else math.nan
        except (TypeError, ValueError):
            result = math.nan
        if not math.isfinite(result):
            raise ValueError(f"header card {key} should hold a finite number, got {item!r}")
        return result

    count = number(COUNT_KEY)
    size = number("DIA_KSZ")
    degree = number("DIA_KDEG", 0.0)
    n_terms = len(polynomial_terms(int(degree)))
    if count != n_terms * size ** 2:
        raise ValueError(f"header card {COUNT_KEY} = {count:g} does not match DIA_KSZ = "
                         f"{size:g} and DIA_KDEG = {degree:g} ({n_terms} term(s) of "
                         f"{size:g}x{size:g} pixels)")
    size = int(size)
    values = np.array([number(_PIXEL.format(index))
                       for index in range(1, int(count) + 1)]).reshape(n_terms, size, size)
    fit_shape = None
    covariance = None
    constant_scale = bool(value("DIA_CSCL", False))
    if degree > 0:
        fit_shape = (int(number("DIA_NY")), int(number("DIA_NX")))
        if shape is not None and tuple(shape) != fit_shape:
            raise ValueError(
                f"the difference image is {shape[0]}x{shape[1]} pixels but its spatially "
                f"varying kernel was fitted on {fit_shape[0]}x{fit_shape[1]} (DIA_NY, "
                "DIA_NX): the kernel's coordinates no longer apply; measure the image "
                "before trimming it, or pass kernel= explicitly")
        if _COVARIANCE.format(0, 0) in keys:
            covariance = np.empty((n_terms, n_terms))
            for i in range(n_terms):
                for j in range(i, n_terms):
                    covariance[i, j] = covariance[j, i] = number(_COVARIANCE.format(i, j))
    scale_factor = number("DIA_P", float(values[0].sum()))
    error = value("DIA_PERR", None)
    # write_result-style headers hold an empty DIA_PERR when errors were not computed
    scale_factor_error = (None if error is None or isinstance(error, fits.card.Undefined)
                          else number("DIA_PERR"))
    return HeaderKernel(values, degree, constant_scale, scale_factor, scale_factor_error,
                        fit_shape, covariance)
