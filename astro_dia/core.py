"""The `DifferenceImager`: validate, fit ``R (x) K + B`` to the target, build the result."""

import logging
import time
import warnings

import numpy as np
import torch
from astropy import units as u
from astropy.nddata import CCDData, StdDevUncertainty
from astropy.stats import mad_std
from scipy.signal import fftconvolve

from . import __version__
from ._outliers import MAX_CLIP_PASSES, find_outliers, robust_twin, set_fit_mask
from ._normal import add_regularization, assemble_normal_equations, cholesky
from ._problem import FitProblem
from ._header import SATURATION_KEYWORDS, header_float, keyword_list
from ._kernel_header import kernel_cards, remove_kernel_cards
from ._tolerances import passes_converged
from ._provenance import copy_meta, stamp
from ._torch import flush_denormals, resolve_device, resolve_dtype, to_numpy, to_tensor
from ._validation import as_image, check_exclude, check_pair, footprint_touches, parse_memory
from .background import background_basis, basis_at, polynomial_terms
from .exceptions import ConvergenceWarning, DIAError, FitQualityWarning
from .flags import INVALID, flag_image
from .kernels import check_kernel_size, delta_kernel, gaussian_kernel
from .losses import get_loss
from .noise import SKY_ESTIMATED, make_noise_model, refine_sky, uncertainty_variance
from .solvers import choose_solver, solve_cg, solve_direct, solve_iterative
from .solvers.gauss_newton import resume
from .uncertainty import (background_errors, covariance_from_information, fisher_information,
                          scale_factor_error)

__all__ = ["DifferenceImager", "DifferenceResult"]

log = logging.getLogger(__name__)

_SOLVERS = ("auto", "direct", "cg", "iterative")

#: Most Gauss-Newton steps of the direct and matrix-free solvers.
_MAX_NEWTON_STEPS = 100

#: Most Gauss-Newton (and L-BFGS) steps of the robust pass before clipping.
_MAX_ROBUST_STEPS = 10

#: Robust standard deviation of D/sigma outside which a fit is warned about.
RESIDUAL_SCATTER_RANGE = (0.8, 1.25)

#: Fraction of the fitted pixels above which clipping is warned about.
_CLIPPED_FRACTION_WARNING = 0.1

#: Most fits with ``reference_noise=True``, each with the reference variance
#: propagated through the previous pass's ``K**2``.
_REFERENCE_PASSES = 10


def _position_shape(x, y):
    """Shape of the broadcast pixel coordinates ``x`` and ``y``."""
    return np.broadcast(np.asarray(x), np.asarray(y)).shape


class DifferenceResult:
    """
    The outcome of one `DifferenceImager.fit`.

    Attributes
    ----------
    difference : `~astropy.nddata.CCDData`
        ``target - model`` in the target's unit, with a
        `~astropy.nddata.StdDevUncertainty` (the noise model at the fitted
        model), a mask (input masks, non-finite pixels, the border where the
        convolution is undefined, and pixels whose kernel footprint touches a
        bad reference pixel) and provenance keywords in ``meta``. Pixels
        where the model is undefined are NaN.
    model : `~astropy.nddata.CCDData`
        The model ``R (x) K + B``, NaN where undefined.
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
    fit_mask : (M, N) bool ndarray
        True for the pixels that entered the fit.
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
    covariance : (n, n) ndarray or None
        Covariance of the parameters of ``M = R (x) K + B``: the ``K**2``
        kernel pixels (C order, dimensionless), then the background
        coefficients (target unit), from the inverse of the observed Fisher
        information (paper eq. 15-17); the kernel-background block is in the
        target unit, the background block in its square. None with
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
        Standard errors of the kernel pixels.
    covariance_valid : bool or None
        False when the information matrix failed the checks of paper
        section 2.5 (a `~astro_dia.exceptions.KernelFitWarning` was
        issued); the errors are then not to be trusted.
    saturation_levels : dict
        The saturation levels used for masking, ``{'reference': (level,
        source), 'target': (level, source)}``, in the target unit; a level is
        None when no saturation masking was done for that image.
    """

    def __init__(self, **values):
        self.kernel_degree, self.constant_scale, self.kernel_terms = 0, False, None
        self.__dict__.update(values)

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
        if np.ndim(x) or np.ndim(y):
            raise ValueError("kernel_at takes one position; loop for several")
        if self.kernel_terms is None:
            return self.kernel.copy()
        return np.tensordot(self._term_values(x, y), self.kernel_terms, axes=1)

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
        if self.kernel_terms is None:
            values = np.full(_position_shape(x, y), self.scale_factor)
        else:
            sums = self.kernel_terms.sum(axis=(1, 2))
            values = np.tensordot(sums, self._term_values(x, y), axes=1)
        return float(values) if values.ndim == 0 else values

    def scale_factor_error_at(self, x, y):
        """
        Standard error of P at pixel positions, from ``self.covariance``.

        Parameters
        ----------
        x, y : float or array_like
            0-based pixel coordinates in the target.

        Returns
        -------
        sigma_p : float or ndarray or None
            None without errors (``compute_errors=False``).
        """
        if self.covariance is None:
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
        from .io import write_result
        write_result(self, path, **kwargs)

    @classmethod
    def read(cls, path):
        """Read a file written by `write`; see `astro_dia.io.read_result`."""
        from .io import read_result
        return read_result(path)

    def plot(self, **kwargs):
        """Diagnostic figure (needs matplotlib); see `astro_dia.plotting.plot_result`."""
        from .plotting import plot_result
        return plot_result(self, **kwargs)

    def __repr__(self):
        return (f"<DifferenceResult kernel={self.kernel.shape[0]}x{self.kernel.shape[1]} "
                f"P={self.scale_factor:.6g} B0={self.background_offset:.6g} "
                f"converged={self.converged}>")


class DifferenceImager:
    """
    Fit a pixel kernel and a differential background, and difference two images.

    The target ``I`` is modelled as ``M = R (x) K + B`` (paper eq. 1-2),
    with ``K`` a square pixel array and ``B`` a polynomial of
    ``background_degree`` in normalised coordinates (eq. 18-19). Only the
    pixels where the convolution is fully defined enter the fit. ``K`` and
    ``B`` minimise the negative log-likelihood of the target under the
    chosen noise model (eq. 8, or the Huber loss of eq. 13), optionally
    with a Laplacian penalty on the kernel (eq. 20).

    Configure once, then apply to any number of pairs with :meth:`fit`
    (the full result) or by calling the instance (the difference image).

    Parameters
    ----------
    kernel_size : int, optional
        Odd side of the square kernel, 19 by default. Choose about three to
        four times the larger PSF FWHM.
    noise_model : {'ccd', 'emccd', 'uniform', 'uncertainty'} or `~astro_dia.noise.NoiseModel`
        Per-pixel variance of the target as a function of the model: the
        CCD model (eq. 6), the EMCCD model (eq. 7), one unknown constant,
        or the target's own ``uncertainty`` (fixed weights).
    loss : {'gaussian', 'huber', 'student_t'} or callable
        Per-pixel negative log-likelihood ``rho(z)`` of the normalised
        residual; see `astro_dia.losses`.
    background_degree : int, optional
        Degree of the background polynomial; 0 (default) is a constant.
    kernel_degree : int, optional
        Degree of the polynomial in the normalised image coordinates that
        every kernel pixel is (paper eq. 18-19 coordinates): 0 (default) is
        one kernel for the whole image; 1 or 2 let the kernel follow a PSF
        that changes across a wide field. The unknowns grow by a factor
        ``(d + 1)(d + 2) / 2``. See :ref:`spatial_variation`.
    constant_scale : bool or None, optional
        With ``kernel_degree > 0``, hold the photometric scale factor P
        constant over the image (the kernel's shape varies, its sum does
        not), as Bramich et al. (2013), HOTPANTS and SFFT do. None (default)
        means True for ``kernel_degree > 0``; pass False to let P vary too
        (a flat-field or transparency gradient). Ignored with
        ``kernel_degree=0``.
    clip : float or None, optional
        Outlier rejection (cosmic rays, hot pixels, other defects), on by
        default at 5 sigma: after a robust first pass (Huber loss, variance
        fixed at the data), pixels whose ``|residual / sigma|`` exceeds
        ``clip`` and whose residual is more than a fifth of the local star
        signal are left out of the fit together with their eight
        neighbours; the fit's own residuals are checked again. Rejected
        pixels are flagged with ``OUTLIER`` (`astro_dia.flags`) in
        ``result.flags`` (not masked: a real transient is an outlier of the
        fit too). None turns rejection off. See :ref:`real_frames`.
    regularization : float, optional
        Strength lambda of the Laplacian kernel penalty (eq. 20); 0 turns it
        off.
    reference_noise : bool, optional
        If true, the reference's variance propagated through the kernel,
        ``sigma_R**2 (x) K**2``, is added to the target variance in the
        fit's weights and in the output uncertainty. It comes from the
        reference's ``uncertainty``, or else from the noise model applied to
        the reference and its header. Use it for a single-epoch reference.
    gain, read_noise, flat, sky, em_gain, excess_noise_factor : optional
        Detector settings for a named ``noise_model``; see
        `~astro_dia.noise.CCDNoiseModel` and
        `~astro_dia.noise.EMCCDNoiseModel`. What is not given is read from
        the target's header.
    kernel_init : {'flat', 'delta'}, float or ndarray, optional
        Shape of the starting kernel with ``preconditioner='diagonal'``:
        flat (the paper's choice), a delta function, a Gaussian of this
        standard deviation in pixels, or an array; its scale and the
        background are set by a linear least-squares fit. With the default
        preconditioner the start is the weighted linear least-squares
        solution itself.
    solver : {'iterative'}, optional
        The paper's optimisation: optional Adam steps, then L-BFGS to
        convergence; see `astro_dia.solvers.iterative`.
    device : str, optional
        ``'auto'`` (CUDA when present, else the CPU), ``'cpu'`` or ``'cuda'``.
    dtype : {'float32', 'float64'}, optional
        Precision of the fit.
    max_iter : int, optional
        Maximum number of L-BFGS iterations.
    max_adam_iter : int, optional
        Maximum number of Adam steps before L-BFGS; 0 (default) skips the
        Adam phase, which the preconditioned L-BFGS does not need.
    adam_tol : float, optional
        Relative loss change at which Adam hands over to L-BFGS.
    preconditioner : {'normal', 'diagonal'}, optional
        Whitening of the L-BFGS parameters: the Cholesky factor of the
        Gauss-Newton normal matrix (default; converges in tens of
        iterations), or its diagonal only (the paper's cost per step, but
        thousands of steps on sharp images).
    compute_errors : bool, optional
        Compute the covariance of the kernel and background from the
        observed Fisher information after the fit (default), and with it
        sigma_P and sigma_B0; see `astro_dia.uncertainty`.
    saturation : `~astropy.units.Quantity`, float or None, optional
        Saturation level of both images, as a Quantity convertible to the
        target's unit or a float in the target's unit. None (default) reads
        each image's own level from its header (SATURATE or SATLEVEL, in
        that image's data unit); an image without either keyword is not
        masked for saturation, which is not an error. Target pixels at or
        above the level are left out of the fit and masked in the output;
        reference pixels at or above it are treated as bad reference pixels,
        so that the target pixels whose kernel footprint touches them are
        left out and masked too.
    add_keyword : bool, optional
        Write provenance keywords into the difference image's ``meta``.

    Raises
    ------
    TypeError, ValueError
        For settings that are of the wrong kind or out of range, here
        rather than at the first fit.

    See Also
    --------
    astro_dia.simulate.make_image_pair : synthetic pairs to try it on.

    Notes
    -----
    With a model-dependent variance the Gaussian likelihood (eq. 8) is not
    a weighted least-squares problem. On noisy data its ``sum(ln sigma)``
    term is balanced on average by the variance dependence of ``chi**2``
    and the fit is unbiased (measured: mean B0 error -0.008 +- 0.21 adu over
    50 realisations); on *noiseless* data it pulls the model about
    ``1 / (2 G F)`` below the data, a shift absorbed by B0. It differs from
    iteratively re-weighted least squares by a small fraction of sigma_P
    (see :ref:`noise_models`). Use ``noise_model='uncertainty'`` for fixed
    weights.

    Examples
    --------
    >>> from astro_dia import DifferenceImager
    >>> from astro_dia.simulate import make_image_pair
    >>> reference, target, truth = make_image_pair(shape=(64, 64), density=100, seed=1)
    >>> imager = DifferenceImager(kernel_size=9, flat=1, sky=0)
    >>> result = imager.fit(reference, target)
    >>> print(f"P = {result.scale_factor:.2f} (true {truth.scale_factor})")
    P = 0.99 (true 1.0)
    >>> result.difference.unit
    Unit("adu")
    """

    def __init__(self, kernel_size=19, *, noise_model="ccd", loss="gaussian",
                 background_degree=0, kernel_degree=0, constant_scale=None, clip=5.0,
                 regularization=0.0, reference_noise=False,
                 gain=None, read_noise=None, flat=None, sky=None, em_gain=None,
                 excess_noise_factor=None, kernel_init="flat", solver="auto",
                 device="auto", dtype="float32", max_iter=2000, max_adam_iter=0,
                 adam_tol=1e-6, preconditioner="normal", compute_errors=True, saturation=None,
                 max_memory=None, add_keyword=True):
        self.kernel_size = check_kernel_size(kernel_size)
        self.noise_model = make_noise_model(
            noise_model, gain=gain, read_noise=read_noise, flat=flat, sky=sky,
            em_gain=em_gain, excess_noise_factor=excess_noise_factor)
        self.loss = get_loss(loss)
        self.background_degree = background_degree
        polynomial_terms(background_degree)  # validates
        try:
            polynomial_terms(kernel_degree)
        except ValueError:
            raise ValueError(f"kernel_degree must be a non-negative integer, got "
                             f"{kernel_degree!r}") from None
        self.kernel_degree = int(kernel_degree)
        # As HOTPANTS and SFFT do: a varying kernel keeps P constant unless asked.
        self.constant_scale = (self.kernel_degree > 0 if constant_scale is None
                               else bool(constant_scale))
        self.clip = self._check_clip(clip)
        regularization = float(regularization)
        if not np.isfinite(regularization) or regularization < 0:
            raise ValueError(f"regularization must be non-negative and finite, got "
                             f"{regularization}")
        self.regularization = regularization
        self.reference_noise = bool(reference_noise)
        if self.reference_noise and self.kernel_degree > 0:
            raise ValueError(
                "reference_noise=True is not supported with kernel_degree > 0 (the reference "
                "variance would need the varying K**2); use kernel_degree=0, or give the "
                "target an uncertainty that includes the reference noise and "
                "noise_model='uncertainty'")
        self.kernel_init = self._check_kernel_init(kernel_init)
        if solver not in _SOLVERS:
            raise ValueError(f"solver must be one of {list(_SOLVERS)}, got {solver!r}")
        self.solver = solver
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        for name, value in (("max_iter", max_iter), ("max_adam_iter", max_adam_iter)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if max_iter == 0:
            raise ValueError("max_iter must be at least 1")
        self.max_iter, self.max_adam_iter = int(max_iter), int(max_adam_iter)
        self.adam_tol = float(adam_tol)
        if preconditioner not in ("normal", "diagonal"):
            raise ValueError(
                f"preconditioner must be 'normal' or 'diagonal', got {preconditioner!r}")
        self.preconditioner = preconditioner
        self.compute_errors = bool(compute_errors)
        self.saturation = self._check_saturation(saturation)
        self.max_memory = parse_memory(max_memory)
        self.add_keyword = bool(add_keyword)

    @staticmethod
    def _check_clip(clip):
        if clip is None:
            return None
        if isinstance(clip, bool):
            raise TypeError(f"clip must be a number of sigma or None, got {clip!r}")
        try:
            value = float(clip)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"clip must be a number of sigma or None, got {clip!r}") from exc
        if not np.isfinite(value) or value < 3:
            raise ValueError(
                f"clip must be finite and at least 3 (sigma), got {clip!r}: a lower threshold "
                "rejects good pixels of a Gaussian tail; use clip=None to turn rejection off")
        return value

    @staticmethod
    def _check_saturation(saturation):
        if saturation is None:
            return None
        if isinstance(saturation, bool):
            raise TypeError(f"saturation must be a Quantity, a float or None, got {saturation!r}")
        if isinstance(saturation, u.Quantity):
            if not saturation.isscalar:
                raise ValueError(f"saturation must be a scalar, got shape {saturation.shape}")
            value = float(saturation.value)
        else:
            try:
                value = float(saturation)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"saturation must be a Quantity, a float or None, got "
                                f"{saturation!r}") from exc
            saturation = value
        if not np.isfinite(value) or value <= 0:
            raise ValueError(f"saturation must be positive and finite, got {saturation!r}")
        return saturation

    def _check_kernel_init(self, kernel_init):
        if isinstance(kernel_init, str):
            if kernel_init not in ("flat", "delta"):
                raise ValueError(
                    f"kernel_init must be 'flat', 'delta', a Gaussian sigma or an array, "
                    f"got {kernel_init!r}")
            return kernel_init
        if np.ndim(kernel_init) == 0:
            gaussian_kernel(self.kernel_size, float(kernel_init))  # validates sigma
            return float(kernel_init)
        kernel_init = np.array(kernel_init, dtype=float)
        shape = (self.kernel_size, self.kernel_size)
        if kernel_init.shape != shape or not np.isfinite(kernel_init).all():
            raise ValueError(f"a kernel_init array must be finite with shape {shape}, "
                             f"got shape {kernel_init.shape}")
        return kernel_init

    def _initial_kernel_shape(self):
        size = self.kernel_size
        if isinstance(self.kernel_init, str):
            if self.kernel_init == "flat":
                return np.full((size, size), 1.0 / size ** 2)
            return delta_kernel(size)
        if isinstance(self.kernel_init, float):
            return gaussian_kernel(size, self.kernel_init)
        return self.kernel_init

    def fit_many(self, reference, targets, **kwargs):
        """
        Difference many targets against one reference; see `astro_dia.batch.fit_many`.

        A frame that fails is recorded in its outcome and does not stop the
        batch; ``workers=N`` or ``scheduler=`` runs it on a dask cluster.
        """
        from .batch import fit_many
        return fit_many(self, reference, targets, **kwargs)

    def __call__(self, reference, target, **kwargs):
        """
        Difference ``target`` against ``reference``.

        Shorthand for ``self.fit(reference, target, **kwargs).difference``.
        """
        return self.fit(reference, target, **kwargs).difference

    def fit(self, reference, target, *, exclude=None):
        """
        Fit the kernel and background, and build the difference image.

        Parameters
        ----------
        reference, target : `~astropy.nddata.CCDData` or `~astropy.nddata.NDData`
            Images of the same field on the same pixel grid, with units.
            Neither is modified.
        exclude : (M, N) bool array_like, optional
            True for pixels to leave out of the *fit* only (known variable
            stars, transients, a moving object): they do not pull the kernel
            and background, and are still differenced and not masked in
            the output. ``result.fit_mask`` shows what entered the fit.

        Returns
        -------
        result : `DifferenceResult`

        Raises
        ------
        TypeError
            If an input is not an NDData.
        ValueError
            For mismatched shapes or WCS, a kernel larger than the image,
            missing detector settings, or too few usable pixels
            (`~astro_dia.exceptions.DIAError`).
        astropy.units.UnitsError
            If the units cannot be reconciled.

        Warns
        -----
        astropy.utils.exceptions.AstropyUserWarning
            For unmasked NaN pixels (which are masked),
            `~astro_dia.exceptions.NoiseModelWarning` when a subtracted sky
            had to be estimated, `~astro_dia.exceptions.ConvergenceWarning`
            when the solver hit its iteration limit,
            `~astro_dia.exceptions.FitQualityWarning` when the robust std
            of D/sigma is outside 0.8-1.25 or rejection took more than 10%
            of the pixels.
        """
        start = time.perf_counter()
        target_image = as_image(target, "target")
        reference_image = check_pair(as_image(reference, "reference"), target_image)
        check_kernel_size(self.kernel_size, target_image.data.shape)
        saturation_levels, saturated = {}, {}
        masked = target_image.bad.copy()
        for name, image in (("reference", reference_image), ("target", target_image)):
            level, source = self._saturation_level(image, target_image.unit, name)
            saturation_levels[name] = (level, source)
            saturated[name] = np.zeros(image.bad.shape, bool)
            if level is not None:
                saturated[name] = np.nan_to_num(image.data, nan=-np.inf) >= level
                # a new array: the Image's mask is our own copy, never the input's
                image.bad = image.bad | saturated[name]

        terms = self.noise_model.variance_terms(target_image.source, mask=target_image.bad)
        reference_variance = self._reference_variance(reference_image)
        reference_bad = reference_image.bad.copy()
        if reference_variance is not None:
            reference_bad |= ~np.isfinite(reference_variance)
        target_bad = target_image.bad | (terms.bad if terms.bad is not None else False)

        shape = target_image.data.shape
        h = self.kernel_size // 2
        valid = (slice(h, shape[0] - h), slice(h, shape[1] - h))
        model_undefined = footprint_touches(reference_bad, self.kernel_size)
        fit_mask = ~(target_bad[valid] | model_undefined)
        excluded = None
        if exclude is not None:
            excluded = check_exclude(exclude, shape)
            fit_mask &= ~excluded[valid]
        self._check_enough_pixels(fit_mask, reference_image)
        saturated_footprint = np.zeros(shape, bool)
        saturated_footprint[valid] = footprint_touches(saturated["reference"], self.kernel_size)
        pixel_masks = dict(masked=masked, saturated=saturated["target"] | saturated_footprint,
                           bad_noise=terms.bad, excluded=excluded)

        problem = FitProblem(
            np.where(reference_bad, 0.0, reference_image.data),
            np.where(target_bad, 0.0, target_image.data), fit_mask,
            background_basis(shape, self.background_degree, region=valid),
            terms.cropped(valid), self.kernel_size, self.loss, self.regularization,
            None if reference_variance is None else np.where(reference_bad, 0.0,
                                                             reference_variance),
            device=self.device, dtype=self.dtype, kernel_degree=self.kernel_degree,
            constant_scale=self.constant_scale)
        with flush_denormals():
            state, outliers = self._solve_clipped(problem, terms)
            if terms.settings.get("sky") == SKY_ESTIMATED:
                state = self._refit_with_refined_sky(problem, terms, valid, state)
        if not state.converged:
            warnings.warn(
                f"the {state.solver} solver stopped after {state.n_iterations} iterations "
                f"without converging ({state.message}); raise max_iter, or check the inputs",
                ConvergenceWarning)
        log.info("fit: %d iterations, %s", state.n_iterations, state.message)
        return self._build_result(state, problem, terms, target_image, reference_image,
                                  reference_bad, reference_variance, valid, model_undefined,
                                  fit_mask, outliers, start, saturation_levels, pixel_masks)

    # -- pieces of fit ----------------------------------------------------------
    def _saturation_level(self, image, unit, name):
        """Saturation level of one image in ``unit`` (its data's unit) and its source."""
        if self.saturation is not None:
            if isinstance(self.saturation, u.Quantity):
                if not self.saturation.unit.is_equivalent(unit):
                    raise u.UnitsError(
                        f"saturation is in {self.saturation.unit}, which cannot be converted "
                        f"to the data unit {unit}")
                return float(self.saturation.to_value(unit)), "argument"
            return float(self.saturation), "argument"
        keyword, value = header_float(image.meta, SATURATION_KEYWORDS,
                                      f"{name} saturation level")
        if keyword is None:
            return None, f"none (no {keyword_list(SATURATION_KEYWORDS)} keyword)"
        if value <= 0:
            raise ValueError(f"header keyword {keyword} of the {name} should give a positive "
                             f"saturation level, got {value!r}")
        source_unit = image.source.unit
        factor = source_unit.to(unit) if source_unit is not None else 1.0
        return value * factor, f"header {keyword}"

    def _reference_variance(self, reference_image):
        if not self.reference_noise:
            return None
        if reference_image.uncertainty is not None:
            return uncertainty_variance(reference_image.source, name="reference") * (
                reference_image.source.unit.to(reference_image.unit) ** 2
                if reference_image.source.unit is not None else 1.0)
        terms = self.noise_model.variance_terms(reference_image.source,
                                                mask=reference_image.bad)
        if terms.estimate_scale:
            raise ValueError(
                "reference_noise=True needs the reference's variance: give the reference an "
                "uncertainty, or use a noise model with detector settings ('ccd', 'emccd')")
        variance = terms.variance(np.where(reference_image.bad, 0.0, reference_image.data))
        if terms.bad is not None:
            variance = np.where(terms.bad, np.nan, variance)
        return variance

    def _check_enough_pixels(self, fit_mask, reference_image=None):
        n_unknowns = (self.kernel_size ** 2 * len(polynomial_terms(self.kernel_degree))
                      + len(polynomial_terms(self.background_degree)))
        n_data = int(fit_mask.sum())
        if n_data == 0:
            raise DIAError(
                "no pixel is left to fit: every pixel of the valid region is masked in the "
                "target or lies within half a kernel of a masked reference pixel")
        if n_data < 2 * n_unknowns:
            raise DIAError(
                f"only {n_data} usable pixels for {n_unknowns} unknowns; use a smaller "
                "kernel_size, a lower background_degree or kernel_degree, or larger images")
        if reference_image is None:
            return
        reference = reference_image.data[~reference_image.bad]
        if np.ptp(reference) == 0:
            raise DIAError("the reference is constant, so no kernel shape can be fitted; "
                           "check that the right frame was given as the reference")

    def _solve_clipped(self, problem, terms):
        """
        The fit with outlier rejection (``clip``): robust pass, clip, fit, re-check.

        Returns the final state and the rejected pixels (a bool ndarray on
        the valid region, all False with ``clip=None``).
        """
        candidates = problem.mask
        if self.clip is None:
            return self._solve(problem, terms), np.zeros(tuple(candidates.shape), bool)
        robust = self._solve_robust(problem)
        outliers = find_outliers(problem, robust.kernel, robust.coefficients, self.clip,
                                 candidates, scale_from_residuals=terms.estimate_scale)
        set_fit_mask(problem, candidates & ~outliers)
        self._check_enough_pixels(to_numpy(problem.mask))
        state = self._solve(problem, terms)
        for _ in range(MAX_CLIP_PASSES):
            found = find_outliers(problem, state.kernel, state.coefficients, self.clip,
                                  candidates, scale_from_residuals=terms.estimate_scale)
            if torch.equal(found, outliers):
                break
            # Judged afresh at each fit: a pixel the robust pass rejected
            # comes back when the fit proper explains it.
            outliers = found
            set_fit_mask(problem, candidates & ~outliers)
            self._check_enough_pixels(to_numpy(problem.mask))
            state = self._resume(problem, state)
        return state, to_numpy(outliers).astype(bool)

    def _solve_robust(self, problem):
        """
        The robust pass before clipping: Huber loss, variance fixed at the data.

        Its influence function is bounded, so outliers of any amplitude
        cannot drag it (see ``astro_dia._outliers``).
        """
        twin = robust_twin(problem)
        solver = self.solver
        if solver not in ("direct", "cg"):
            solver = choose_solver(problem.shape, self.kernel_size, problem.device, twin.loss,
                                   kernel_terms=problem.kernel_terms)
        settings = dict(max_iter=_MAX_ROBUST_STEPS, max_polish_iter=_MAX_ROBUST_STEPS)
        if solver == "direct":
            return solve_direct(twin, max_bytes=self._strip_budget(twin), **settings)
        return solve_cg(twin, **settings)

    def _resume(self, problem, state):
        """Continue a fit after the problem's weights or fit mask changed."""
        if state.solver == "iterative":
            resumed = solve_iterative(problem, state.kernel, state.coefficients,
                                      max_iter=self.max_iter, cholesky_factor=None)
        else:
            resumed = resume(problem, state, max_iter=min(self.max_iter, _MAX_NEWTON_STEPS),
                             max_polish_iter=self.max_iter)
        resumed.n_iterations += state.n_iterations
        resumed.solver = state.solver
        return resumed

    def _solve(self, problem, terms):
        """Run the chosen solver (``auto`` resolved per problem)."""
        solver = self.solver
        if solver == "auto":
            solver = choose_solver(problem.shape, self.kernel_size, problem.device,
                                   self.loss, kernel_terms=problem.kernel_terms)
        if solver == "iterative":
            state = self._solve_iterative(problem, terms)
        else:
            state = self._solve_newton(problem, terms, solver)
        state.solver = solver
        return state

    def _solve_newton(self, problem, terms, solver):
        """Direct or matrix-free: a weighted linear solution, then exact Newton steps."""
        settings = dict(max_iter=min(self.max_iter, _MAX_NEWTON_STEPS), max_polish_iter=self.max_iter)
        if solver == "direct":
            settings["max_bytes"] = self._strip_budget(problem)
            solve = solve_direct
        else:
            solve = solve_cg
        state = solve(problem, prepare=self._start_hook(problem, terms), **settings)
        n_iterations = state.n_iterations
        for _ in range(_REFERENCE_PASSES - 1 if problem.reference_variance_spectrum
                       is not None else 0):
            previous = float(state.kernel.sum())
            problem.update_reference_variance(state.kernel)
            state = resume(problem, state, max_iter=settings["max_iter"],
                           max_polish_iter=self.max_iter)
            n_iterations += state.n_iterations
            if passes_converged(previous, float(state.kernel.sum()), problem.dtype):
                break
        state.n_iterations = n_iterations
        return state

    def _start_hook(self, problem, terms):
        """
        What the iterative solver does with its start, for the other solvers.

        The reference variance through the start's ``K**2`` and the constant
        of the 'uniform' model are set from the linear start, so that every
        solver optimises the same objective. None when there is nothing to set.
        """
        if problem.reference_variance_spectrum is None and not terms.estimate_scale:
            return None

        def prepare(kernel, coefficients):
            problem.update_reference_variance(kernel)
            if terms.estimate_scale:
                self._set_uniform_scale(problem, kernel, coefficients)
            return True

        return prepare

    def _strip_budget(self, problem):
        """Bytes for one im2col strip: what ``max_memory`` leaves after the problem's arrays."""
        if self.max_memory is None:
            return None
        ny, nx = problem.shape
        n = problem.n_kernel + problem.basis.shape[0]
        # Images on the device (reference, target, weights, model, basis,
        # FFT buffers), and the float64 normal matrix and its factor.
        fixed = ((12 + problem.basis.shape[0] + 2 * problem.kernel_terms) * ny * nx * 8
                 + 3 * n * n * 8)
        budget = self.max_memory - fixed
        if budget <= 0:
            raise DIAError(
                f"max_memory={self.max_memory} bytes is less than the {fixed} bytes that the "
                f"images and the normal matrix of this fit need; raise max_memory or use "
                f"solver='cg'")
        return budget

    def _solve_iterative(self, problem, terms):
        """Start from the linear solution, then minimise the exact objective."""
        weights = problem.weights(problem.target)   # variance at the data, for the start
        factor = None
        if self.preconditioner == "normal":
            kernel, coefficients, factor = self._normal_start(problem, weights)
        if factor is None:
            shape = to_tensor(self._initial_kernel_shape(), device=problem.device,
                              dtype=problem.dtype)
            kernel, coefficients = problem.linear_start(shape, weights)
        if terms.estimate_scale:
            self._set_uniform_scale(problem, kernel, coefficients)
        passes = _REFERENCE_PASSES if problem.reference_variance_spectrum is not None else 1
        n_iterations = 0
        for _ in range(passes):
            problem.update_reference_variance(kernel)
            state = solve_iterative(problem, kernel, coefficients, max_iter=self.max_iter,
                                    adam_tol=self.adam_tol, max_adam_iter=self.max_adam_iter,
                                    cholesky_factor=factor)
            n_iterations += state.n_iterations
            previous = float(kernel.sum())
            kernel, coefficients = state.kernel, state.coefficients
            if passes_converged(previous, float(kernel.sum()), problem.dtype):
                break
        state.n_iterations = n_iterations
        return state

    def _refit_with_refined_sky(self, problem, terms, valid, state):
        """Estimate the subtracted sky from the residuals, then polish the fit."""
        with torch.no_grad():
            model = problem.model(state.kernel, state.coefficients)
            residual = to_numpy(problem.target - model)
        terms.offset = refine_sky(terms.cropped(valid), to_numpy(model), residual,
                                  to_numpy(problem.mask).astype(bool))
        problem.offset = terms.offset
        return self._resume(problem, state)

    @staticmethod
    def _normal_start(problem, weights):
        """Weighted linear least-squares solution (float64) and its Cholesky factor."""
        normal, rhs = assemble_normal_equations(problem, weights, dtype=torch.float64)
        add_regularization(normal, problem, rhs)
        factor = cholesky(normal)
        if factor is None:
            return None, None, None
        theta = torch.cholesky_solve(rhs[:, None], factor)[:, 0]
        kernel = theta[:problem.n_kernel].reshape(problem.kernel_shape)
        return kernel.to(problem.dtype), theta[problem.n_kernel:].to(problem.dtype), factor

    @staticmethod
    def _set_uniform_scale(problem, kernel, coefficients):
        """For the uniform model, set the constant variance from the start's residuals."""
        with torch.no_grad():
            residual = (problem.target - problem.model(kernel, coefficients))[problem.mask]
        sigma = float(mad_std(to_numpy(residual)))
        problem.constant = torch.full_like(problem.constant, max(sigma, 1e-30) ** 2)

    def _build_result(self, state, problem, terms, target_image, reference_image,
                      reference_bad, reference_variance, valid, model_undefined, fit_mask,
                      outliers, start, saturation_levels, pixel_masks):
        shape = target_image.data.shape
        kernel_terms = to_numpy(problem.effective_kernel(state.kernel.detach()))
        kernel = kernel_terms if self.kernel_degree == 0 else kernel_terms[0]
        coefficients = to_numpy(problem.uncentred_coefficients(state.kernel,
                                                               state.coefficients))
        # The final model in float64, from the un-centred reference.
        reference = np.where(reference_bad, 0.0, reference_image.data)
        if self.kernel_degree == 0:
            model_valid = fftconvolve(reference, kernel, mode="valid")
        else:
            model_valid = sum(term * fftconvolve(reference, k, mode="valid") for term, k in
                              zip(background_basis(shape, self.kernel_degree, region=valid),
                                  kernel_terms))
        basis = background_basis(shape, self.background_degree)
        background = np.tensordot(coefficients, basis, axes=1)
        model_valid = model_valid + background[valid]
        model_valid[model_undefined] = np.nan
        model = np.full(shape, np.nan)
        model[valid] = model_valid

        cropped = terms.cropped(valid)
        variance_valid = cropped.variance(model_valid)
        if reference_variance is not None:
            variance_valid = variance_valid + np.maximum(fftconvolve(
                np.where(reference_bad, 0.0, reference_variance), kernel ** 2, mode="valid"), 0)
        difference = target_image.data - model
        fit_mask = fit_mask & ~outliers   # the pixels the final fit used
        if terms.estimate_scale:
            sigma = float(mad_std(difference[valid][fit_mask]))
            variance_valid = np.full(model_valid.shape, sigma ** 2)
        sigma = np.full(shape, np.nan)
        sigma[valid] = np.sqrt(variance_valid)
        full_outliers = np.zeros(shape, bool)
        full_outliers[valid] = outliers
        flags = flag_image(shape, outlier=full_outliers, no_model=~np.isfinite(model),
                           **pixel_masks)
        mask = (flags & INVALID) != 0
        sigma[mask] = np.nan
        full_fit_mask = np.zeros(shape, bool)
        full_fit_mask[valid] = fit_mask
        residual_scatter = self._check_fit_quality(
            (difference[valid] / sigma[valid])[fit_mask], int(outliers.sum()),
            int(fit_mask.sum()))

        unit = target_image.unit
        scale_factor = float(kernel.sum())
        errors = dict(covariance=None, scale_factor_error=None, background_error=None,
                      kernel_error=None, covariance_valid=None)
        if self.compute_errors:
            errors = self._errors(problem, state, terms, difference[valid][fit_mask])
            errors["background_error"] = errors["background_error"] * unit
        meta = copy_meta(target_image.meta)
        if self.add_keyword:
            stamp(meta, self._provenance(state, scale_factor, coefficients, terms,
                                         int(fit_mask.sum()), errors, saturation_levels,
                                         int(outliers.sum()), residual_scatter))
        wcs = target_image.wcs
        result = DifferenceResult(
            difference=CCDData(difference, unit=unit, uncertainty=StdDevUncertainty(sigma),
                               mask=mask, flags=flags, meta=meta, wcs=wcs),
            model=CCDData(model, unit=unit, mask=~np.isfinite(model), meta=copy_meta(meta),
                          wcs=wcs),
            kernel=kernel,
            kernel_degree=self.kernel_degree,
            constant_scale=bool(problem.constant_scale),
            kernel_terms=None if self.kernel_degree == 0 else kernel_terms,
            scale_factor=scale_factor,
            background=background * unit,
            background_coefficients=coefficients * unit,
            background_degree=self.background_degree,
            fit_mask=full_fit_mask,
            flags=flags,
            n_outliers=int(outliers.sum()),
            clip=self.clip,
            residual_scatter=residual_scatter,
            n_data=int(fit_mask.sum()),
            n_iterations=int(state.n_iterations),
            converged=bool(state.converged),
            loss_value=float(state.loss_value),
            fit_time=time.perf_counter() - start,
            noise_settings=dict(terms.settings, sky=(float(terms.offset),
                                                     terms.settings.get("sky", "none"))),
            solver=state.solver,
            saturation_levels=saturation_levels,
            **errors,
        )
        # The kernel in the header, so that photometry on the difference image
        # alone (after CCDData.write/read too) uses the target PSF; kernel
        # cards inherited from the input would be stale.
        remove_kernel_cards(result.difference.meta)
        if self.add_keyword:
            stamp(result.difference.meta, kernel_cards(result))
        return result

    def _errors(self, problem, state, terms, residuals):
        """Covariance, sigma_P, sigma_B0 and kernel errors from the Fisher information."""
        information = fisher_information(problem, state.kernel, state.coefficients)
        n_kernel, n_scale = problem.n_kernel, self.kernel_size ** 2
        covariance, valid = covariance_from_information(
            information, reference_mean=problem.reference_mean, n_kernel=n_kernel,
            n_scale=n_scale)
        if terms.estimate_scale:
            # The 'uniform' weights were 1/constant with the constant from the
            # starting residuals; the output's variance is that of the final ones.
            constant = float(problem.constant.reshape(-1)[0])
            covariance = covariance * float(mad_std(residuals)) ** 2 / constant
        diagonal = np.maximum(np.diag(covariance)[:n_scale], 0.0)
        return dict(covariance=covariance,
                    scale_factor_error=scale_factor_error(covariance, n_scale),
                    background_error=background_errors(covariance, n_kernel),
                    kernel_error=np.sqrt(diagonal).reshape(self.kernel_size, self.kernel_size),
                    covariance_valid=bool(valid))

    @staticmethod
    def _check_fit_quality(z, n_outliers, n_fit):
        """Robust std of D/sigma on the fitted pixels, with a warning when far from 1."""
        z = z[np.isfinite(z)]
        scatter = float(mad_std(z)) if z.size else float("nan")
        low, high = RESIDUAL_SCATTER_RANGE
        if not low <= scatter <= high:
            warnings.warn(
                f"the normalised residuals D/sigma of the fitted pixels have a robust standard "
                f"deviation of {scatter:.3g}, where the noise model predicts 1 (accepted: "
                f"{low}-{high}): the uncertainties of the difference image are not to be "
                f"trusted. Likely causes: wrong noise-model settings (gain, read noise, flat, "
                f"a subtracted sky, data already in electrons), outliers the fit kept "
                f"(lower clip=), a misregistered pair, or a kernel too small for the seeing "
                f"(raise kernel_size)", FitQualityWarning)
        fraction = n_outliers / max(n_outliers + n_fit, 1)
        if fraction > _CLIPPED_FRACTION_WARNING:
            warnings.warn(
                f"outlier rejection left {n_outliers} pixels ({100 * fraction:.1f}%) out of "
                f"the fit, more than cosmic rays and hot pixels explain: check the noise-model "
                f"settings and the registration of the pair, or raise clip=", FitQualityWarning)
        return scatter

    def _provenance(self, state, scale_factor, coefficients, terms, n_data, errors,
                    saturation_levels, n_outliers, residual_scatter):
        loss_name = getattr(self.loss, "name", getattr(self.loss, "__name__",
                                                        type(self.loss).__name__))
        cards = [
            ("DIA_VER", __version__, "astro_dia version"),
            ("DIA_KSZ", self.kernel_size, "kernel size (pixels)"),
            ("DIA_P", scale_factor, "photometric scale factor P = sum(K)"),
            ("DIA_B0", float(coefficients[0]), "background B0 at the image centre"),
            ("DIA_BDEG", self.background_degree, "background polynomial degree"),
            ("DIA_KDEG", self.kernel_degree, "kernel polynomial degree (spatial variation)"),
            ("DIA_LOSS", loss_name, "loss function"),
            ("DIA_NOIS", self.noise_model.name, "noise model"),
            ("DIA_SOLV", state.solver, "solver"),
            ("DIA_NIT", int(state.n_iterations), "solver iterations"),
            ("DIA_CONV", bool(state.converged), "solver converged"),
            ("DIA_NDAT", n_data, "pixels in the fit"),
            ("DIA_LAMB", self.regularization, "Laplacian regularisation lambda"),
            ("DIA_REFN", self.reference_noise, "reference noise in the weights"),
            ("DIA_SKY", float(terms.offset), "sky added back in the variance"),
            ("DIA_CLIP", "none" if self.clip is None else self.clip,
             "outlier rejection threshold (sigma)"),
            ("DIA_NOUT", n_outliers, "pixels rejected from the fit as outliers"),
            ("DIA_ZSTD", residual_scatter, "robust std of D/sigma on the fitted pixels"),
        ]
        if self.kernel_degree > 0:
            cards.append(("DIA_CSCL", bool(self.constant_scale),
                          "scale factor held constant over the image"))
        if errors["scale_factor_error"] is not None:
            cards += [
                ("DIA_PERR", errors["scale_factor_error"], "sigma_P (Fisher information)"),
                ("DIA_B0ER", float(errors["background_error"][0].value),
                 "sigma_B0 (Fisher information)"),
                ("DIA_CVOK", errors["covariance_valid"], "covariance passed validity checks"),
            ]
        for key, name in (("DIA_RSAT", "reference"), ("DIA_TSAT", "target")):
            level = saturation_levels[name][0]
            if level is not None:
                cards.append((key, level, f"{name} saturation level (masked at or above)"))
        return cards

    def __repr__(self):
        return (f"DifferenceImager(kernel_size={self.kernel_size}, "
                f"noise_model={self.noise_model.name!r}, "
                f"loss={getattr(self.loss, 'name', self.loss)!r}, "
                f"background_degree={self.background_degree}, "
                f"kernel_degree={self.kernel_degree}, solver={self.solver!r}, "
                f"device={str(self.device)!r}, dtype={str(self.dtype).replace('torch.', '')!r})")
