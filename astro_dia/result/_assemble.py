"""Assembly of a fit's outcome (private; functional core of `DifferenceImager.fit`).

Owns what happens after the solver: the final model ``R (x) K + B`` in
float64 on the un-centred reference (on the fit's device, by the fit's own
functions in `astro_dia.model._model`), its variance (with the reference
noise through ``K**2`` and the 'uniform' constant from the final
residuals), the difference, its uncertainty, flags and mask, the
guard's fit-quality checks (`astro_dia.fitting._guard`), the errors from the Fisher information and
the provenance cards. `assemble_result` returns the values of a
`~astro_dia.DifferenceResult`; the imager makes the record.
"""

import warnings

import numpy as np
from astropy.nddata import CCDData, StdDevUncertainty
from astropy.stats import mad_std

from ..fitting._errors_in_variables import (centred_solution, has_reference_noise,
                                            predicted_scale_bias, reference_noise_information,
                                            sandwich_covariance, unweighted_reference_variance)
from ..fitting._guard import assess_fit, quality_cards
from ..fitting._matrix_free_errors import dense_is_cheap, matrix_free_errors, use_matrix_free
from ..model._model import convolve_frame
from ..fitting._outliers import reference_median
from .._package_version import version as __version__
from ._provenance import copy_meta, stamp
from ..model._torch import to_numpy
from ..background import background_basis, evaluate_background
from ..exceptions import KernelFitWarning
from ..flags import INVALID, flag_image
from ..fitting.uncertainty import (background_errors, covariance_from_information,
                                   fisher_information, information_weights, scale_factor_error)

__all__ = []

def final_model(reference, kernel_terms, coefficients, shape, valid, *, kernel_degree, device):
    """
    ``R (x) K + B`` in float64 on the valid region, and the background ``B``.

    Parameters
    ----------
    reference : (M, N) ndarray
        The un-centred reference, bad pixels set to 0.
    kernel_terms : (K, K) or (T, K, K) ndarray
        The kernel, or its polynomial terms for ``kernel_degree > 0``.
    coefficients : (B,) ndarray
        Un-centred background coefficients.
    device : str or `torch.device`
        The fit's device, where the convolution is made
        (`astro_dia.model._model.convolve_frame`, the fit's own function).
    """
    basis = (None if kernel_degree == 0
             else background_basis(shape, kernel_degree, region=valid))
    model_valid = convolve_frame(reference, kernel_terms, device=device, kernel_basis=basis)
    background = evaluate_background(coefficients, shape)
    return model_valid + background[valid], background


def fit_errors(problem, state, kernel_size, compute_errors=True, bias_variance=None,
               reference_variance=None):
    """
    sigma_P, sigma_B0 and the background errors; the covariance when asked for or cheap.

    With ``compute_errors=True`` and a constant kernel, sigma_P and the
    background errors come from matrix-free solves
    (``astro_dia.fitting._matrix_free_errors``); on frames where the dense
    information is cheap (`dense_is_cheap`), the covariance and the kernel
    errors are left to ``pending_covariance``, a function that computes
    them when the result is first asked for them. ``'covariance'``, a
    spatially varying kernel, or a matrix-free solve that fails (the dense
    checks then say why) take the dense route at once.

    The errors are those of the fit's weights; `rescale_errors` scales them
    to the final residuals of the 'uniform' model. They are computed before
    the result's frames are made, so that the solves' products and those
    frames are not in memory at the same time.

    With ``bias_variance`` (a reference variance, for a fit without
    ``reference_noise``), ``predicted_bias`` is the first-order bias of P
    that reference noise gives (``astro_dia.fitting._errors_in_variables``), else None.
    With ``reference_variance`` (the stars' fit of ``fit_region``), sigma_P
    and, on the matrix-free route, the background errors include what that
    reference noise adds to a fit that leaves it out of its weights; the
    covariance matrix holds the target's noise alone.
    """
    n_kernel, n_scale = problem.n_kernel, kernel_size ** 2
    kernel, coefficients = state.kernel, state.coefficients

    def dense():
        information = fisher_information(problem, kernel, coefficients)
        covariance, valid = covariance_from_information(
            information, reference_mean=problem.reference_mean, n_kernel=n_kernel,
            n_scale=n_scale)
        if has_reference_noise(problem):
            # The noisy reference: the sandwich of the corrected estimator.
            extra = reference_noise_information(
                problem, information_weights(problem, kernel, coefficients), kernel)
            covariance = sandwich_covariance(covariance, extra, problem.reference_mean,
                                             n_kernel, n_scale)
        diagonal = np.maximum(np.diag(covariance)[:n_scale], 0.0)
        return dict(covariance=covariance,
                    kernel_error=np.sqrt(diagonal).reshape(kernel_size, kernel_size),
                    valid=bool(valid))

    if use_matrix_free(problem, compute_errors):
        sigma_p, sigma_b, valid, predicted = matrix_free_errors(
            problem, kernel, coefficients, n_scale=n_scale,
            metric=getattr(state, "metric", None), bias_variance=bias_variance,
            reference_variance=reference_variance)
        if valid:
            def deferred():
                values = dense()
                return dict(covariance=values["covariance"], kernel_error=values["kernel_error"])

            return dict(covariance=None, scale_factor_error=sigma_p,
                        background_error=sigma_b, kernel_error=None,
                        covariance_valid=True, predicted_bias=predicted,
                        pending_covariance=deferred if dense_is_cheap(problem) else None)
    values = dense()
    covariance = values["covariance"]
    predicted, unweighted = None, 0.0
    if bias_variance is not None or reference_variance is not None:
        solution = centred_solution(covariance, problem.reference_mean, n_kernel, n_scale)
        weights = information_weights(problem, kernel, coefficients)
        if bias_variance is not None:
            predicted = predicted_scale_bias(problem, weights, kernel, solution, bias_variance)
        if reference_variance is not None:
            unweighted = unweighted_reference_variance(problem, weights, kernel, solution,
                                                       reference_variance)
    sigma_p = scale_factor_error(covariance, n_scale)
    if np.isfinite(sigma_p) and unweighted > 0:
        sigma_p = float(np.sqrt(sigma_p ** 2 + unweighted))
    valid = values["valid"]
    if valid and not (np.isfinite(sigma_p) and sigma_p > 0):
        # The checks of the information passed, but the covariance gives
        # sigma_P no positive variance (measured: the sandwich covariance of
        # reference_noise=True on a 1024 x 682 real pair): say so.
        warnings.warn(
            f"sigma_P could not be computed (its variance is {sigma_p ** 2:.3g}): the "
            f"errors of this fit are not to be trusted; compare with reference_noise=False "
            f"or compute_errors='covariance'", KernelFitWarning)
        valid = False
    return dict(covariance=covariance, predicted_bias=predicted,
                scale_factor_error=sigma_p,
                background_error=background_errors(covariance, n_kernel),
                kernel_error=values["kernel_error"],
                covariance_valid=valid, pending_covariance=None)


def rescale_errors(errors, rescale):
    """
    ``errors`` (of `fit_errors`) for a variance ``rescale`` times the fit's.

    The 'uniform' weights were 1/constant with the constant from the
    starting residuals; the output's variance is that of the final ones.
    """
    if rescale == 1.0:
        return errors
    root = float(np.sqrt(rescale))
    scaled = dict(errors)
    for key in ("scale_factor_error", "background_error", "kernel_error"):
        if scaled[key] is not None:
            scaled[key] = scaled[key] * root
    if scaled["covariance"] is not None:
        scaled["covariance"] = scaled["covariance"] * rescale
    pending = scaled["pending_covariance"]
    if pending is not None:
        def deferred():
            values = pending()
            return dict(covariance=values["covariance"] * rescale,
                        kernel_error=values["kernel_error"] * root)
        scaled["pending_covariance"] = deferred
    return scaled


def _card_number(value):
    """``value`` as a float for a FITS card, or None where it is not finite."""
    value = float(value)
    return value if np.isfinite(value) else None


def provenance_cards(config, state, scale_factor, coefficients, terms, n_data, errors,
                     saturation_levels, n_outliers, quality):
    """The ``DIA_*`` cards of a fit; ``config`` gives the imager's scalar settings."""
    loss = config["loss"]
    loss_name = getattr(loss, "name", getattr(loss, "__name__", type(loss).__name__))
    clip = config["clip"]
    cards = [
        ("DIA_VER", __version__, "astro_dia version"),
        ("DIA_KSZ", config["kernel_size"], "kernel size (pixels)"),
        ("DIA_P", scale_factor, "photometric scale factor P = sum(K)"),
        ("DIA_B0", float(coefficients[0]), "background B0 at the image centre"),
        ("DIA_BDEG", config["background_degree"], "background polynomial degree"),
        ("DIA_KDEG", config["kernel_degree"], "kernel polynomial degree (spatial variation)"),
        ("DIA_LOSS", loss_name, "loss function"),
        ("DIA_NOIS", config["noise_model"], "noise model"),
        ("DIA_SOLV", state.solver, "solver"),
        ("DIA_NIT", int(state.n_iterations), "solver iterations"),
        ("DIA_CONV", bool(state.converged), "solver converged"),
        ("DIA_NDAT", n_data, "pixels in the fit"),
        ("DIA_FREG", config.get("fit_region", "all"), "fit region: all pixels or stars"),
        ("DIA_LAMB", config["regularization"], "Laplacian regularisation lambda"),
        ("DIA_REFN", config["reference_noise"], "reference noise: weights, EIV correction"),
        ("DIA_SKY", float(terms.offset), "sky added back in the variance"),
        ("DIA_CLIP", "none" if clip is None else clip, "outlier rejection threshold (sigma)"),
        ("DIA_NOUT", n_outliers, "pixels rejected from the fit as outliers"),
    ] + quality_cards(quality)
    if config["kernel_degree"] > 0:
        cards.append(("DIA_CSCL", bool(config["constant_scale"]),
                      "scale factor held constant over the image"))
    if errors["scale_factor_error"] is not None:
        cards += [
            ("DIA_PERR", _card_number(errors["scale_factor_error"]),
             "sigma_P (Fisher information)"),
            ("DIA_B0ER", _card_number(errors["background_error"][0].value),
             "sigma_B0 (Fisher information)"),
            ("DIA_CVOK", errors["covariance_valid"], "covariance passed validity checks"),
        ]
    for key, name in (("DIA_RSAT", "reference"), ("DIA_TSAT", "target")):
        level = saturation_levels[name][0]
        if level is not None:
            cards.append((key, level, f"{name} saturation level (masked at or above)"))
    return cards


def result_errors(state, problem, inputs, config):
    """
    The fit's errors (`fit_errors`) as the result takes them, with ``predicted_bias``.

    All None with ``compute_errors=False``. A fit on the reference's stars
    (``config['fit_region'] == 'stars'``) has the reference's noise in its
    errors (a fit on every pixel of a noisy reference says in its REFNOISE
    warning that its sigma_P leaves that noise out).
    """
    if not config["compute_errors"]:
        return dict(covariance=None, scale_factor_error=None, background_error=None,
                    kernel_error=None, covariance_valid=None, pending_covariance=None)
    check = inputs.reference_variance_check
    variance = None if check is None else check[0]
    on_stars = config.get("fit_region", "all") == "stars"
    return fit_errors(problem, state, config["kernel_size"], config["compute_errors"],
                      bias_variance=variance,
                      reference_variance=variance if on_stars else None)


def assemble_result(state, problem, inputs, outliers, config, errors=None):
    """
    The values of a `~astro_dia.DifferenceResult` (without ``fit_time``).

    Parameters
    ----------
    state : FitState
        The solver's final state.
    problem : `~astro_dia.fitting._problem.FitProblem`
    inputs : `~astro_dia.fitting._inputs.FitInputs`
    outliers : (M', N') bool ndarray
        Pixels of the valid region rejected from the fit.
    config : dict
        The imager's scalar settings: ``kernel_size``, ``kernel_degree``,
        ``background_degree``, ``clip``, ``compute_errors``,
        ``add_keyword`` and those of `provenance_cards`.
    errors : dict, optional
        `result_errors` of this fit, when already computed.
    """
    target_image, terms, valid = inputs.target_image, inputs.terms, inputs.valid
    kernel_degree = config["kernel_degree"]
    shape = target_image.data.shape
    kernel_terms = to_numpy(problem.effective_kernel(state.kernel.detach()))
    kernel = kernel_terms if kernel_degree == 0 else kernel_terms[0]
    coefficients = to_numpy(problem.uncentred_coefficients(state.kernel, state.coefficients))
    check = inputs.reference_variance_check
    errors = dict(result_errors(state, problem, inputs, config) if errors is None else errors)
    predicted_bias = errors.pop("predicted_bias", None)
    # The final model in float64, from the un-centred reference.
    reference = np.where(inputs.reference_bad, 0.0, inputs.reference_image.data)
    model_valid, background = final_model(
        reference, kernel_terms,
        coefficients, shape, valid, kernel_degree=kernel_degree, device=problem.device)
    model_valid[inputs.model_undefined] = np.nan
    model = np.full(shape, np.nan)
    model[valid] = model_valid

    variance_valid = terms.cropped(valid).variance(model_valid)
    if inputs.reference_variance is not None:
        variance_valid = variance_valid + np.maximum(convolve_frame(
            np.where(inputs.reference_bad, 0.0, inputs.reference_variance), kernel ** 2,
            device=problem.device), 0)
    difference = target_image.data - model
    fit_mask = inputs.fit_mask & ~outliers   # the pixels the final fit used
    if terms.estimate_scale:
        sigma = float(mad_std(difference[valid][fit_mask]))
        variance_valid = np.full(model_valid.shape, sigma ** 2)
        errors = rescale_errors(errors, sigma ** 2 / float(problem.constant.reshape(-1)[0]))
    sigma = np.full(shape, np.nan)
    sigma[valid] = np.sqrt(variance_valid)
    full_outliers = np.zeros(shape, bool)
    full_outliers[valid] = outliers
    flags = flag_image(shape, outlier=full_outliers, no_model=~np.isfinite(model),
                       **inputs.pixel_masks)
    mask = (flags & INVALID) != 0
    sigma[mask] = np.nan
    full_fit_mask = np.zeros(shape, bool)
    full_fit_mask[valid] = fit_mask
    n_outliers, n_data = int(outliers.sum()), int(fit_mask.sum())
    median = reference_median(problem) + problem.reference_mean
    quality = assess_fit((difference[valid] / sigma[valid])[fit_mask], kernel,
                         n_outliers=n_outliers, outliers=outliers, sigma=sigma[valid],
                         star_model=model_valid - background[valid] - median * kernel.sum(),
                         reference=reference, median=median,
                         scale_factor_error=errors["scale_factor_error"],
                         pass_scale_factors=state.pass_scale_factors,
                         robust_converged=state.robust_converged,
                         predicted_bias=predicted_bias,
                         bias_source=None if check is None else check[1],
                         refitted_bias=config.get("refitted_bias"),
                         trusted=bool(state.converged) and errors["covariance_valid"] is not False)

    unit = target_image.unit
    scale_factor = float(kernel.sum())
    if errors["background_error"] is not None:
        errors["background_error"] = errors["background_error"] * unit
    meta = copy_meta(target_image.meta)
    if config["add_keyword"]:
        meta = stamp(meta, provenance_cards(
            config, state, scale_factor, coefficients, terms, n_data, errors,
            inputs.saturation_levels, n_outliers, quality))
    wcs = target_image.wcs
    return dict(
        difference=CCDData(difference, unit=unit, uncertainty=StdDevUncertainty(sigma),
                           mask=mask, flags=flags, meta=meta, wcs=wcs),
        model=CCDData(model, unit=unit, mask=~np.isfinite(model), meta=copy_meta(meta),
                      wcs=wcs),
        kernel=kernel,
        kernel_degree=kernel_degree,
        constant_scale=bool(problem.constant_scale),
        kernel_terms=None if kernel_degree == 0 else kernel_terms,
        scale_factor=scale_factor,
        background=background * unit,
        background_coefficients=coefficients * unit,
        background_degree=config["background_degree"],
        fit_mask=full_fit_mask,
        fit_region=config.get("fit_region", "all"),
        flags=flags,
        n_outliers=n_outliers,
        clip=config["clip"],
        residual_scatter=quality.residual_scatter,
        quality=quality.as_dict(),
        n_data=n_data,
        n_iterations=int(state.n_iterations),
        converged=bool(state.converged),
        loss_value=float(state.loss_value),
        noise_settings=dict(terms.settings, sky=(float(terms.offset),
                                                 terms.settings.get("sky", "none"))),
        solver=state.solver,
        saturation_levels=inputs.saturation_levels,
        **errors,
    )
