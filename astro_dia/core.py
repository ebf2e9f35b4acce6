"""The `DifferenceImager`: validate, fit ``R (x) K + B`` to the target, build the result."""

import time
from dataclasses import replace

import numpy as np

from .result._assemble import assemble_result, result_errors
from .fitting._fit_region import (check_fit_region, enough_star_pixels,
                                  star_region)
from .fitting._guard import attenuates
from .fitting._fitting import run_fit
from .fitting._heap import reused_large_blocks, spectrum_bytes
from .fitting._inputs import check_enough_pixels, prepare_inputs, reference_variance_estimate
from .result._kernel_header import kernel_cards, remove_kernel_cards
from .fitting._problem import FitProblem
from .result._provenance import stamp
from .model._torch import device_name, dtype_name, exact_float32, out_of_memory_as_error
from .fitting._validation import check_clip, check_saturation
from .background import background_basis, polynomial_terms
from .exceptions import DIAError
from .kernels import check_kernel_size
from .losses import get_loss
from .noise import make_noise_model
from .fitting.solvers.settings import check_kernel_init, get_solver
from .result import DifferenceResult

__all__ = ["DifferenceImager"]



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
        If true, the reference is treated as noisy, with the variance
        ``sigma_R**2`` of its ``uncertainty``, or else of the noise model
        applied to the reference and its header: (1) ``sigma_R**2 (x) K**2``
        is added to the target variance in the fit's weights and in the
        output uncertainty; (2) the fit is corrected for the errors in its
        variables (least squares on a noisy reference regresses on its
        noise and biases P low: measured -6.2% in a sparse field, -0.8% in
        a dense one, fitting every pixel, with a reference as noisy as the
        target), so that P is unbiased (+0.2% +- 0.6%, +0.2% +- 0.1%); (3)
        sigma_P and the background errors include the reference's noise (a
        sandwich covariance; scatter over noise realisations / sigma_P 1.21
        and 0.78). Use it for a single-epoch reference; it costs one or two
        assemblies of the normal matrix more (0.5 s each at 400 x 400).
        The variance must be right: a stack whose header describes one
        exposure is over-corrected (+15% in a sparse field), and warned about
        (`~astro_dia.exceptions.NoiseModelWarning`). False (default): the
        reference is taken as noiseless, which is safe for a stacked one
        (ten times less variance: P -0.4% +- 0.4%); the fit predicts the
        bias a noisy reference would give; when it exceeds sigma_P the
        default ``fit_region='auto'`` refits on the reference's stars, and
        a fit still predicted to be biased warns
        (`~astro_dia.exceptions.FitQualityWarning`). See
        :ref:`noisy_reference`.
    fit_region : {'auto', 'all', 'stars'}, optional
        Which pixels the fit uses. ``'all'``: every usable pixel (the
        paper's fit). ``'stars'``: the footprints of the reference's stars
        that stand out of its noise (seeded at 30 sigma in the reference
        smoothed over 1 px, grown down to 5 sigma, plus 3 px), as HOTPANTS
        fits stamps around bright stars: where the reference's fine
        structure is noise, fitting it smooths the kernel and biases P low.
        ``'auto'`` (default): every pixel, then the stars when that fit's
        reference noise is predicted to bias P by more than sigma_P (see
        ``reference_noise``) and the stars hold at least 20 pixels per
        unknown (with ``compute_errors=False`` nothing is predicted and every
        pixel is fitted); ``result.fit_region`` (card ``DIA_FREG``) says which.
        The refitted fit still warns (REFNOISE, with both predicted biases):
        the refit lessens the bias without removing it.
        Measured on the real ProperImage pair (single-exposure reference):
        P 0.9968 -> 0.9993 against a flux ratio of 1.0058 +- 0.0021, the
        rms of D next to bright stars 1.65 -> 0.98 times HOTPANTS's. See
        :ref:`real_frames`.
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
        ``'auto'`` (CUDA when present, else the CPU), ``'cpu'``, ``'cuda'`` or
        ``'cuda:N'``. Stored as the resolved name (``imager.device == 'cpu'``).
    dtype : {'float32', 'float64'}, optional
        Precision of the fit, stored as its name (``imager.dtype == 'float32'``).
    compute_errors : bool or 'covariance', optional
        True (default): sigma_P, sigma_B0 and the errors of the other
        background coefficients from the observed Fisher information after
        the fit, by matrix-free solves (a constant kernel) or from the full
        covariance (a spatially varying one). Where the direct solver's
        size rule finds the dense information cheap, ``result.covariance``
        and ``kernel_error`` are computed when first read; on larger frames
        they are None. ``'covariance'``: the full covariance at once, on
        any frame. False: no errors. See `astro_dia.uncertainty`.
    saturation : `~astropy.units.Quantity`, float or None, optional
        Saturation level of both images, as a Quantity convertible to the
        target's unit or a float in the target's unit; it overrides the
        headers. None (default) reads each image's own level from the
        first of its header keywords SATURATE, SATLEVEL, SATURATN, SATURATA
        and MAXLIN (in that order, in that image's data unit). An image
        with none of them is not masked for saturation, which is not an
        error; but if its maximum is shared by a plateau of pixels far
        above its median (flat-topped star cores, e.g. at 65535), a
        `~astro_dia.exceptions.SaturationWarning` names that level. Target
        pixels at or above the level are left out of the fit and masked in
        the output; reference pixels at or above it are treated as bad
        reference pixels, so that the target pixels whose kernel footprint
        touches them are left out and masked too. See :ref:`real_frames`.
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
                 regularization=0.0, reference_noise=False, fit_region="auto",
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
        self.fit_region = check_fit_region(fit_region)
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
        # Names, not torch objects: the fit problem converts them (_torch).
        self.device = device_name(device)
        # 'auto' is resolved again where a pickled imager is loaded (a dask
        # worker with a GPU, a client without one): see __setstate__.
        self._device_request = "auto" if isinstance(device, str) and device == "auto" else None
        self.dtype = dtype_name(dtype)
        if isinstance(compute_errors, str) and compute_errors != "covariance":
            raise ValueError(f"compute_errors must be True, False or 'covariance', "
                             f"got {compute_errors!r}")
        self.compute_errors = (compute_errors if isinstance(compute_errors, str)
                               else bool(compute_errors))
        self.saturation = check_saturation(saturation)
        self.add_keyword = bool(add_keyword)

    def __setstate__(self, state):
        """Loaded from a pickle: ``device='auto'`` chooses this machine's device."""
        self.__dict__.update(state)
        if state.get("_device_request") == "auto":
            self.device = device_name("auto")

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
            of D/sigma is outside 0.8-1.25, for each other cause of doubt
            of the guard (:ref:`fit_quality`: a heavy tail, rejected star
            flux, P moving between the clipped fits, a kernel that
            deconvolves, and, without ``reference_noise``, the
            reference's noise predicted to bias P by more than sigma_P),
            `~astro_dia.exceptions.SaturationWarning` when an image
            without a saturation level looks saturated.
        """
        start = time.perf_counter()
        inputs = prepare_inputs(
            reference, target, kernel_size=self.kernel_size, noise_model=self.noise_model,
            saturation=self.saturation, reference_noise=self.reference_noise,
            kernel_degree=self.kernel_degree, background_degree=self.background_degree,
            exclude=exclude)
        if not self.reference_noise and self.kernel_degree == 0 and self.compute_errors:
            inputs = replace(inputs, reference_variance_check=reference_variance_estimate(
                self.noise_model, inputs.reference_image))
        shape = inputs.target_image.data.shape
        guard = out_of_memory_as_error(shape, self.kernel_size, self.device, DIAError)
        with guard, exact_float32(), reused_large_blocks(spectrum_bytes(shape, self.dtype)):
            region = "stars" if self.fit_region == "stars" else "all"
            if region == "stars":
                inputs = self._on_stars(inputs, required=True)
            state, outliers, fitted, problem = self._solve(inputs)
            config = self._config(region)
            errors = result_errors(state, problem, fitted, config)
            if self.fit_region == "auto" and attenuates(
                    errors.get("predicted_bias"), float(problem.scale_factor(state.kernel)),
                    errors.get("scale_factor_error")):
                on_stars = self._on_stars(inputs, required=False)
                if on_stars is not None:
                    state, outliers, fitted, problem = self._solve(on_stars)
                    config = dict(self._config("stars"),
                                  refitted_bias=errors.get("predicted_bias"))
                    errors = result_errors(state, problem, fitted, config)
            values = assemble_result(state, problem, fitted, outliers, config, errors)
        pending = values.pop("pending_covariance")
        result = DifferenceResult(fit_time=time.perf_counter() - start, **values)
        if pending is not None:
            result._defer_covariance(pending)
        # The kernel in the header, so that photometry on the difference image
        # alone (after CCDData.write/read too) uses the target PSF; kernel
        # cards inherited from the input would be stale.
        remove_kernel_cards(result.difference.meta)
        if self.add_keyword:
            result.difference.meta = stamp(result.difference.meta, kernel_cards(result))
        return result

    def _solve(self, inputs):
        """
        Build the fit problem of prepared ``inputs`` and run the fit.

        Returns the solver's state, the rejected pixels, the inputs with
        the noise terms as the fit refined them, and the problem.
        """
        variance = inputs.reference_variance
        shape = inputs.target_image.data.shape
        reference_bad, target_bad, valid = inputs.reference_bad, inputs.target_bad, inputs.valid
        problem = FitProblem(
            np.where(reference_bad, 0.0, inputs.reference_image.data),
            np.where(target_bad, 0.0, inputs.target_image.data), inputs.fit_mask,
            background_basis(shape, self.background_degree, region=valid),
            inputs.terms.cropped(valid), self.kernel_size, self.loss, self.regularization,
            None if variance is None else np.where(reference_bad, 0.0, variance),
            device=self.device, dtype=self.dtype, kernel_degree=self.kernel_degree,
            constant_scale=self.constant_scale)

        def check_pixels(fit_mask):
            check_enough_pixels(fit_mask, self.kernel_size, self.kernel_degree,
                                self.background_degree)

        state, outliers, terms = run_fit(problem, self.noise_model, inputs.terms, valid,
                                         self.solver_settings, clip=self.clip,
                                         check_pixels=check_pixels)
        return state, outliers, replace(inputs, terms=terms), problem

    def _on_stars(self, inputs, *, required):
        """
        ``inputs`` with the fit restricted to the reference's stars (`star_region`).

        With too few pixels there for the unknowns, None, or with
        ``required`` a `~astro_dia.exceptions.DIAError`.
        """
        check = inputs.reference_variance_check
        variance = inputs.reference_variance if check is None else check[0]
        stars = star_region(inputs.reference_image.data, variance, inputs.reference_bad)
        fit_mask = inputs.fit_mask & stars[inputs.valid]
        n_unknowns = (self.kernel_size ** 2 * len(polynomial_terms(self.kernel_degree))
                      + len(polynomial_terms(self.background_degree)))
        n_pixels = int(fit_mask.sum())
        if not enough_star_pixels(n_pixels, n_unknowns):
            if required:
                raise DIAError(
                    f"fit_region='stars' found {n_pixels} usable pixels on the reference's "
                    f"stars for {n_unknowns} unknowns (at least 20 per unknown are needed); "
                    f"use fit_region='all', a smaller kernel_size, or a deeper reference")
            return None
        return replace(inputs, fit_mask=fit_mask)

    def _config(self, fit_region="all"):
        """The scalar settings that the result and its provenance cards record."""
        return dict(fit_region=fit_region, kernel_size=self.kernel_size, kernel_degree=self.kernel_degree,
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
                f"device={self.device!r}, dtype={self.dtype!r})")
