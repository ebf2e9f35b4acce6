"""
Noise models: the per-pixel variance of the target as a function of the model.

Owns the noise models (`NoiseModel` and its subclasses, chosen by name with
`make_noise_model`; in ``_models``), the detector parameters they read from
the arguments or the header (``_header``, ``_detector``), the master flat
(``_flat``), their resolution into `VarianceTerms` with the sky refit
`refine_sky` (``_variance_terms``) and the check of an image without a
saturation level for flat-topped cores (``_saturation``).
"""

from ._detector import uncertainty_variance
from ._flat import flat_from_uncertainty
from ._models import (CCDNoiseModel, EMCCDNoiseModel, NoiseModel, UncertaintyNoiseModel,
                      UniformNoiseModel, make_noise_model)
from ._variance_terms import VarianceTerms, refine_sky

# Settings of the checks, defined where they are applied and importable from here as before.
from ._detector import (SKY_ESTIMATED, SKY_EXCESS_THRESHOLD, SKY_ZERO_SIGMAS,  # noqa: F401
                        UNCERTAINTY_DISAGREEMENT)
from ._flat import CCDPROC_FLAT_KEYS  # noqa: F401

__all__ = ["VarianceTerms", "NoiseModel", "CCDNoiseModel", "EMCCDNoiseModel",
           "UniformNoiseModel", "UncertaintyNoiseModel", "make_noise_model",
           "uncertainty_variance", "flat_from_uncertainty", "refine_sky"]
