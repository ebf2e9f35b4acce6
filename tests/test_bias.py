"""The four noiseless 'no algorithmic bias' tests of paper section 3.4."""

import numpy as np
import pytest
from numpy.testing import assert_allclose

from astro_dia import DifferenceImager

from .conftest import DEVICES

# Noiseless pairs: D/sigma is ~0 where the noise model predicts 1, which the
# fit-quality check rightly reports; these tests are about the kernel alone.
pytestmark = pytest.mark.filterwarnings("ignore::astro_dia.exceptions.FitQualityWarning")

KINDS = ["identity", "blur", "shift", "half_shift"]
TOLERANCE = {"float32": 1e-5, "float64": 1e-9}


#: The matrix-free solver needs hundreds of products on these noiseless,
#: extremely ill-conditioned problems (condition number ~1e15): 15-190 s
#: each on a 2-core CPU, so it runs with -m slow.
SOLVERS = ["iterative", "direct", pytest.param("cg", marks=pytest.mark.slow)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", KINDS)
def test_noiseless_pair_recovers_scale_and_background(bias_pair, kind, dtype, solver, device,
                                                      request):
    if (kind, dtype, solver) == ("identity", "float64", "cg"):
        # Measured: it once stopped at |P - 1| ~ 6e-9; on this machine it has
        # met 1e-9 at every run since 8acf6c4 at least, a margin that another
        # BLAS build's sums may not keep.
        request.applymarker(pytest.mark.xfail(
            strict=False, reason="the matrix-free solver may stop at |P - 1| ~ 6e-9 on this "
                                 "condition-1e15 problem (target 1e-9)"))
    reference, target, truth = bias_pair(kind)
    imager = DifferenceImager(19, noise_model="uncertainty", dtype=dtype, device=device,
                              solver=solver)
    result = imager.fit(reference, target)
    assert result.converged
    assert_allclose(result.scale_factor, truth.scale_factor, rtol=TOLERANCE[dtype])
    assert_allclose(result.background_offset.value, truth.background, rtol=TOLERANCE[dtype])
    # The model reproduces the noiseless target far below its noise level.
    model = result.model.data[result.fit_mask]
    sigma = target.uncertainty.array[result.fit_mask]
    assert np.max(np.abs(model - target.data[result.fit_mask]) / sigma) < 1e-3


@pytest.mark.parametrize("kind", ["identity", "shift"])
def test_noiseless_delta_kernels_peak_where_expected(bias_pair, kind):
    reference, target, truth = bias_pair(kind)
    result = DifferenceImager(19, noise_model="uncertainty", dtype="float64").fit(reference,
                                                                                target)
    assert np.unravel_index(np.argmax(result.kernel), result.kernel.shape) == \
        np.unravel_index(np.argmax(truth.kernel), truth.kernel.shape)
    assert_allclose(result.kernel.max(), 1.0, atol=0.05)


def test_model_dependent_variance_shifts_background_by_half_a_count(bias_pair):
    # The sum(ln sigma) term of eq. 8 moves the optimum ~1/(2G) below the
    # data when sigma depends on the model: documented, and absorbed by B0.
    reference, target, truth = bias_pair("blur", gain=2.0)
    result = DifferenceImager(19, flat=1, sky=0, dtype="float64").fit(reference, target)
    assert_allclose(result.scale_factor, truth.scale_factor, rtol=1e-4)
    assert_allclose(result.background_offset.value - truth.background, -1 / (2 * 2.0),
                    atol=0.02)
