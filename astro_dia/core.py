"""The `DifferenceImager`: validate, fit ``R (x) K + B`` to the target, build the result."""

import time

import numpy as np

from ._assemble import assemble_result
from ._fitting import run_fit
from ._inputs import check_enough_pixels, prepare_inputs
from ._kernel_header import kernel_cards, remove_kernel_cards
from ._problem import FitProblem
from ._provenance import stamp
from ._torch import resolve_device, resolve_dtype
from ._validation import check_clip, check_saturation
from .background import background_basis, basis_at, polynomial_terms
from .kernels import check_kernel_size
from .losses import get_loss
from .noise import make_noise_model
from .solvers.settings import check_kernel_init, get_solver

__all__ = ["DifferenceImager", "DifferenceResult"]

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
    solver : {'auto', 'direct', 'cg', 'iterative'} or `~astro_dia.solvers.Solver`, optional
        The optimiser, by name or as an object carrying its own settings
        (`~astro_dia.solvers.AutoSolver`, `~astro_dia.solvers.DirectSolver`,
        `~astro_dia.solvers.ConjugateGradientSolver`,
        `~astro_dia.solvers.IterativeSolver`). ``'auto'`` (default) picks
        the direct or matrix-free solver by problem size, and the iterative
        one for a user-supplied loss; see :ref:`solvers`.
    max_iter, max_adam_iter, adam_tol, preconditioner, max_memory, kernel_init : optional
        Shortcuts for the solver's settings when ``solver`` is a name (None
        means the solver's default); giving one together with a solver
        object is an error. ``max_iter`` (2000): most iterations;
        ``max_adam_iter`` (0: no Adam phase) and ``adam_tol`` (1e-6): the
        Adam steps before L-BFGS; ``preconditioner`` ('normal' or
        'diagonal'): the whitening of L-BFGS; ``max_memory`` (bytes, a
        string such as ``'2GB'`` or a Quantity): the direct solver's
        budget; ``kernel_init`` ('flat', 'delta', a Gaussian sigma or a
        (K, K) array): the starting kernel shape with
        ``preconditioner='diagonal'``. See `~astro_dia.solvers.IterativeSolver`
        and `~astro_dia.solvers.DirectSolver`.
    device : str, optional
        ``'auto'`` (CUDA when present, else the CPU), ``'cpu'`` or ``'cuda'``.
    dtype : {'float32', 'float64'}, optional
        Precision of the fit.
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
                 excess_noise_factor=None, kernel_init=None, solver="auto",
                 device="auto", dtype="float32", max_iter=None, max_adam_iter=None,
                 adam_tol=None, preconditioner=None, compute_errors=True, saturation=None,
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
        self.clip = check_clip(clip)
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
        if kernel_init is not None:
            kernel_init = check_kernel_init(kernel_init, self.kernel_size)
        self.solver_settings = get_solver(
            solver, max_iter=max_iter, max_adam_iter=max_adam_iter, adam_tol=adam_tol,
            preconditioner=preconditioner, max_memory=max_memory, kernel_init=kernel_init)
        check_kernel_init(self.solver_settings.kernel_init, self.kernel_size)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        self.compute_errors = bool(compute_errors)
        self.saturation = check_saturation(saturation)
        self.add_keyword = bool(add_keyword)

    @property
    def solver(self):
        """Name of the solver: 'auto', 'direct', 'cg' or 'iterative'."""
        return self.solver_settings.name

    max_iter = property(lambda self: self.solver_settings.max_iter,
                        doc="Most iterations of the solver (shortcut).")
    max_adam_iter = property(lambda self: self.solver_settings.max_adam_iter,
                             doc="Most Adam steps before L-BFGS (shortcut).")
    adam_tol = property(lambda self: self.solver_settings.adam_tol,
                        doc="Relative loss change at which Adam stops (shortcut).")
    preconditioner = property(lambda self: self.solver_settings.preconditioner,
                              doc="Whitening of the iterative solver (shortcut).")
    max_memory = property(lambda self: self.solver_settings.max_memory,
                          doc="Memory budget of the direct solver in bytes, or None (shortcut).")
    kernel_init = property(lambda self: self.solver_settings.kernel_init,
                           doc="Starting kernel shape of the iterative solver (shortcut).")

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
        inputs = prepare_inputs(
            reference, target, kernel_size=self.kernel_size, noise_model=self.noise_model,
            saturation=self.saturation, reference_noise=self.reference_noise,
            kernel_degree=self.kernel_degree, background_degree=self.background_degree,
            exclude=exclude)
        reference_bad, target_bad, valid = inputs.reference_bad, inputs.target_bad, inputs.valid
        variance = inputs.reference_variance
        problem = FitProblem(
            np.where(reference_bad, 0.0, inputs.reference_image.data),
            np.where(target_bad, 0.0, inputs.target_image.data), inputs.fit_mask,
            background_basis(inputs.target_image.data.shape, self.background_degree,
                             region=valid),
            inputs.terms.cropped(valid), self.kernel_size, self.loss, self.regularization,
            None if variance is None else np.where(reference_bad, 0.0, variance),
            device=self.device, dtype=self.dtype, kernel_degree=self.kernel_degree,
            constant_scale=self.constant_scale)

        def check_pixels(fit_mask):
            check_enough_pixels(fit_mask, self.kernel_size, self.kernel_degree,
                                self.background_degree)

        state, outliers = run_fit(problem, inputs.terms, valid, self.solver_settings,
                                  clip=self.clip, check_pixels=check_pixels)
        values = assemble_result(state, problem, inputs, outliers, self._config())
        result = DifferenceResult(fit_time=time.perf_counter() - start, **values)
        # The kernel in the header, so that photometry on the difference image
        # alone (after CCDData.write/read too) uses the target PSF; kernel
        # cards inherited from the input would be stale.
        remove_kernel_cards(result.difference.meta)
        if self.add_keyword:
            stamp(result.difference.meta, kernel_cards(result))
        return result

    def _config(self):
        """The scalar settings that the result and its provenance cards record."""
        return dict(kernel_size=self.kernel_size, kernel_degree=self.kernel_degree,
                    background_degree=self.background_degree, clip=self.clip,
                    compute_errors=self.compute_errors, add_keyword=self.add_keyword,
                    loss=self.loss, noise_model=self.noise_model.name,
                    regularization=self.regularization, reference_noise=self.reference_noise,
                    constant_scale=self.constant_scale)

    def __repr__(self):
        return (f"DifferenceImager(kernel_size={self.kernel_size}, "
                f"noise_model={self.noise_model.name!r}, "
                f"loss={getattr(self.loss, 'name', self.loss)!r}, "
                f"background_degree={self.background_degree}, "
                f"kernel_degree={self.kernel_degree}, solver={self.solver!r}, "
                f"device={str(self.device)!r}, dtype={str(self.dtype).replace('torch.', '')!r})")
