"""
The record of one fit: `DifferenceResult`.

This module owns the result of `~astro_dia.DifferenceImager.fit`: its
fields (named and typed in the class), the kernel and scale factor at any
position of a spatially varying fit, and the hooks that write, read and
plot it. The FITS layout itself lives in ``astro_dia.result._fits_layout`` (public
as `astro_dia.io.write_result` and `astro_dia.io.read_result`), the figure
in `astro_dia.plotting`; neither imports this module, so the imager, `io`,
`plotting` and `batch` all depend on the result and never the other way
round.
"""

from dataclasses import dataclass
from typing import Optional

import numpy as np
from astropy import units as u
from astropy.nddata import CCDData

from ._fits_layout import read_result_fields, write_result_file
from . import _varying_kernel as varying_kernel
from ..background import basis_at
from ..plotting import plot_result

__all__ = ["DifferenceResult"]


def _position_shape(x, y):
    """Shape of the broadcast pixel coordinates ``x`` and ``y``."""
    return np.broadcast(np.asarray(x), np.asarray(y)).shape


class _Deferred:
    """
    A field of `DifferenceResult` that a fit may leave to be computed when first read.

    The fit finds sigma_P and sigma_B0 matrix-free; on frames where the
    dense information is cheap it leaves the covariance and the kernel
    errors to a function (`DifferenceResult._defer_covariance`), called
    the first time either is read. Setting either explicitly cancels it.
    """

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, result, owner=None):
        if result is None:
            return None    # the dataclass default
        values = result.__dict__
        pending = values.pop("_pending_covariance", None)
        if pending is not None:
            values.update(pending())
        return values.get(self.name)

    def __set__(self, result, value):
        # A value set explicitly replaces the deferred computation.
        result.__dict__.pop("_pending_covariance", None)
        result.__dict__[self.name] = value


@dataclass(kw_only=True, eq=False, repr=False)
class DifferenceResult:
    """
    The outcome of one `DifferenceImager.fit`.

    A typed record: every field below is named in the class and passed by
    keyword. `DifferenceImager.fit` builds it, and `read` (or
    `astro_dia.io.read_result`) builds it back from a file written by
    `write`.

    Attributes
    ----------
    difference : `~astropy.nddata.CCDData`
        ``target - model`` in the target's unit, with a
        `~astropy.nddata.StdDevUncertainty` (the noise model at the fitted
        model), a mask (input masks, non-finite pixels, the border where the
        convolution is undefined, and pixels whose kernel footprint touches a
        bad reference pixel) and provenance keywords in ``meta``. Pixels
        where the model is undefined are NaN.
    model : `~astropy.nddata.CCDData` or None
        The model ``R (x) K + B``, NaN where undefined; None when read from
        a file written without it.
    kernel : (K, K) ndarray
        The convolution kernel, such that the model is the reference
        *convolved* with it (a kernel peaked at ``(+1, +1)`` from the centre
        shifts the reference by ``+1`` pixel in ``y`` and ``x``). With a
        spatially varying kernel, the kernel at the image centre; see
        `kernel_at`.
    kernel_degree : int
        Degree of the kernel's spatial variation (0: one kernel).
    constant_scale : bool
        Whether P was held constant over the image (``kernel_degree > 0``).
    kernel_terms : (n_terms, K, K) ndarray or None
        With ``kernel_degree > 0``, the kernel of each polynomial term, in
        the order of `~astro_dia.background.polynomial_terms`: the kernel at
        ``(x, y)`` is ``sum_j eta**m_j xi**n_j kernel_terms[j]`` (normalised
        coordinates of paper eq. 19). None for a constant kernel.
    scale_factor : float
        Photometric scale factor P, the sum of the kernel (paper eq. 3); at
        the image centre for a spatially varying kernel (see
        `scale_factor_at`).
    background : `~astropy.units.Quantity`
        The differential background image (full frame).
    background_coefficients : `~astropy.units.Quantity`
        Coefficients of the background polynomial, in the order of
        `~astro_dia.background.polynomial_terms`; the first is B0, the
        background at the image centre.
    background_degree : int
        Degree of the background polynomial.
    fit_mask : (M, N) bool ndarray
        True for the pixels that entered the fit.
    fit_region : {'all', 'stars'}
        Where the fit looked: every usable pixel, or the footprints of the
        reference's stars (``DifferenceImager(fit_region=...)``; FITS card
        ``DIA_FREG``).
    flags : (M, N) uint8 ndarray
        Bit flags of each pixel (`astro_dia.flags`): masked input,
        saturated, no model, bad noise model, outlier, excluded. Also set as
        ``difference.flags``; ``difference.mask`` is
        ``flags & astro_dia.flags.INVALID != 0``.
    n_outliers : int
        Pixels that outlier rejection (``clip``) left out of the fit.
    clip : float or None
        The rejection threshold in sigma (None: no rejection).
    residual_scatter : float
        Robust standard deviation (`~astropy.stats.mad_std`) of D/sigma on
        the fitted pixels: near 1 when the noise model describes the data
        (FITS card ``DIA_ZSTD``); outside 0.8-1.25 a
        `~astro_dia.exceptions.FitQualityWarning` is issued.
    quality : dict
        What the guard measured (``astro_dia`` warns with a
        `~astro_dia.exceptions.FitQualityWarning` for each cause it finds;
        see :ref:`fit_quality`): ``residual_scatter``; ``tail_fraction``,
        the fraction of fitted pixels beyond 5 sigma (card ``DIA_ZT5``);
        ``rejected_star_flux``, the fraction of the stars' model flux in
        rejected pixels (``DIA_FREJ``); ``kernel_negative``, the share of
        the kernel's mass beyond its noise that is negative (``DIA_KNEG``);
        ``kernel_lobe``, the depth of its deepest negative lobe, smoothed
        over 3 x 3 pixels, over its peak (``DIA_KLOB``); ``kernel_width``,
        its rms width per axis in pixels, from its second moment (negative
        for a kernel that sharpens; ``DIA_KWID``); ``robust_scale_factor``,
        P of the robust pass before clipping (``DIA_PROB``; None without
        rejection); ``pass_shift``, the largest change of P between the
        fits on the clipped pixels, in sigma_P (``DIA_PSHF``);
        ``predicted_bias``, the first-order bias of P that the reference's
        noise gives a fit without ``reference_noise`` (``DIA_PBIA``; None
        where not predicted); and
        ``causes``, the tuple of causes warned about (``DIA_QUAL``, 'OK'
        when empty): 'SCATTER', 'TAIL', 'CLIPPED', 'STARFLUX',
        'PSHIFT', 'REFNOISE', 'DECONVOLVES'.
    n_data : int
        Number of pixels in the fit.
    n_iterations : int
        Solver iterations.
    converged : bool
        Whether the solver met its tolerance.
    loss_value : float
        Final value of the objective, with its normalising constant.
    fit_time : float
        Wall-clock seconds spent in `DifferenceImager.fit`.
    noise_settings : dict
        The resolved noise-model settings and where each came from.
    solver : str
        The solver that made the fit.
    covariance : (n, n) ndarray or None
        Covariance of the parameters of ``M = R (x) K + B``: the ``K**2``
        kernel pixels (C order, dimensionless), then the background
        coefficients (target unit), from the inverse of the observed Fisher
        information (paper eq. 15-17); the kernel-background block is in the
        target unit, the background block in its square. With the default
        ``compute_errors=True`` and a constant kernel it is computed when
        first read on frames where the dense information is cheap (the
        direct solver's size rule), and None on larger ones (ask for it
        with ``compute_errors='covariance'``); None with
        ``compute_errors=False``. See `astro_dia.uncertainty`. With a
        spatially varying kernel the kernel pixels are those of every term
        in turn; under ``constant_scale`` the central pixel of each
        non-constant term is not a free parameter and its rows are
        meaningless.
    scale_factor_error : float or None
        Standard error sigma_P of the scale factor, ``sqrt(1^T C_KK 1)``.
    background_error : `~astropy.units.Quantity` or None
        Standard errors of ``background_coefficients`` (target unit); the
        first is sigma_B0.
    kernel_error : (K, K) ndarray or None
        Standard errors of the kernel pixels; None where ``covariance`` is.
    covariance_valid : bool or None
        False when the information matrix failed the checks of paper
        section 2.5 (a `~astro_dia.exceptions.KernelFitWarning` was
        issued); the errors are then not to be trusted. True for errors
        found matrix-free (every solve converged to a positive variance;
        a solve that does not falls back to the checked dense route); a
        covariance computed later on first read makes its own checks and
        warns if they fail.
    saturation_levels : dict
        The saturation levels used for masking, ``{'reference': (level,
        source), 'target': (level, source)}``, in the target unit; a level is
        None when no saturation masking was done for that image.
    """

    difference: CCDData
    model: Optional[CCDData] = None
    kernel: np.ndarray
    kernel_degree: int = 0
    constant_scale: bool = False
    kernel_terms: Optional[np.ndarray] = None
    scale_factor: float
    background: u.Quantity
    background_coefficients: u.Quantity
    background_degree: int
    fit_mask: np.ndarray
    flags: np.ndarray
    fit_region: str = "all"
    n_outliers: int = 0
    clip: Optional[float] = None
    residual_scatter: float
    quality: Optional[dict] = None
    n_data: int
    n_iterations: int
    converged: bool
    loss_value: float
    fit_time: float
    noise_settings: dict
    solver: str
    saturation_levels: dict
    covariance: Optional[np.ndarray] = _Deferred()
    scale_factor_error: Optional[float] = None
    background_error: Optional[u.Quantity] = None
    kernel_error: Optional[np.ndarray] = _Deferred()
    covariance_valid: Optional[bool] = None

    def _defer_covariance(self, compute):
        """
        Leave ``covariance`` and ``kernel_error`` to ``compute()`` until first read.

        ``compute`` returns a dict with both; it holds the fit's tensors,
        which are released once it has been called.
        """
        self.__dict__["_pending_covariance"] = compute

    def __getstate__(self):
        # A deferred covariance is computed before pickling: its function
        # holds the fit's tensors and closures.
        self.covariance
        return self.__dict__

    def _term_values(self, x, y):
        """Polynomial terms ``eta**m xi**n`` of the kernel at pixel positions."""
        return basis_at(self.difference.shape, self.kernel_degree, x, y)

    def kernel_at(self, x, y):
        """
        The convolution kernel at a pixel position.

        Parameters
        ----------
        x, y : float
            0-based pixel coordinates in the target.

        Returns
        -------
        kernel : (K, K) ndarray
            ``self.kernel`` itself for a constant kernel.
        """
        return varying_kernel.kernel_at(self.kernel, self.kernel_terms, self.kernel_degree,
                                        self.difference.shape, x, y)

    def scale_factor_at(self, x, y):
        """
        The photometric scale factor P at pixel positions.

        Parameters
        ----------
        x, y : float or array_like
            0-based pixel coordinates in the target.

        Returns
        -------
        scale_factor : float or ndarray
            A float for a scalar position; ``self.scale_factor`` everywhere
            for a constant kernel or with ``constant_scale``.
        """
        return varying_kernel.scale_factor_at(self.scale_factor, self.kernel_terms,
                                              self.kernel_degree, self.difference.shape, x, y)

    def scale_factor_error_at(self, x, y):
        """
        Standard error of P at pixel positions (``scale_factor_error`` for
        a constant kernel, from ``self.covariance`` for a varying one).

        Parameters
        ----------
        x, y : float or array_like
            0-based pixel coordinates in the target.

        Returns
        -------
        sigma_p : float or ndarray or None
            None without errors (``compute_errors=False``).
        """
        if self.scale_factor_error is None:
            return None
        if self.kernel_terms is None or self.constant_scale:
            values = np.full(_position_shape(x, y), self.scale_factor_error)
        else:
            pixels = self.kernel.size
            n_terms = len(self.kernel_terms)
            block = self.covariance[:n_terms * pixels, :n_terms * pixels]
            # P(x, y) = t^T S theta, with S summing each term's pixels.
            summed = block.reshape(n_terms, pixels, n_terms, pixels).sum(axis=(1, 3))
            terms = self._term_values(x, y).reshape(n_terms, -1)
            variance = np.einsum("in,ij,jn->n", terms, summed, terms)
            values = np.sqrt(np.maximum(variance, 0.0)).reshape(_position_shape(x, y))
        return float(values) if values.ndim == 0 else values

    @property
    def scale_factor_map(self):
        """P at every pixel of the image (ndarray), for a spatially varying kernel."""
        ny, nx = self.difference.shape
        y, x = np.mgrid[0:ny, 0:nx]
        return np.asarray(self.scale_factor_at(x, y), dtype=float)

    @property
    def background_offset(self):
        """B0, the constant term of the background, as a Quantity."""
        return self.background_coefficients[0]

    def normalized_residuals(self):
        """
        The difference divided by its uncertainty, on the fitted pixels.

        Returns
        -------
        z : 1-D ndarray
        """
        diff = self.difference
        return (diff.data / diff.uncertainty.array)[self.fit_mask]

    def write(self, path, **kwargs):
        """Write the whole fit as one multi-extension FITS file; see `astro_dia.io.write_result`."""
        write_result_file(self, path, **kwargs)

    @classmethod
    def read(cls, path):
        """Read a file written by `write`; see `astro_dia.io.read_result`."""
        return cls(**read_result_fields(path))

    def plot(self, **kwargs):
        """Diagnostic figure (needs matplotlib); see `astro_dia.plotting.plot_result`."""
        return plot_result(self, **kwargs)

    def __repr__(self):
        return (f"<DifferenceResult kernel={self.kernel.shape[0]}x{self.kernel.shape[1]} "
                f"P={self.scale_factor:.6g} B0={self.background_offset:.6g} "
                f"converged={self.converged}>")
