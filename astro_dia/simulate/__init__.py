"""
Simulated images with known truth, for tests, validation and the demo.

Owns the reference/target pairs and their truth (``_pairs``), the star
fields and their rendering (``_star_field``), time series with variable
stars (``_series``) and point sources injected into an image
(``_injection``).
"""

from ._injection import expected_snr, inject_point_sources
from ._pairs import SimulationTruth, draw_s10_parameters, make_bias_test, make_image_pair
from ._series import VariableSeriesTruth, make_variable_series
from ._star_field import make_star_field

__all__ = ["inject_point_sources", "expected_snr", "SimulationTruth", "make_star_field",
           "make_image_pair", "make_bias_test", "draw_s10_parameters", "VariableSeriesTruth",
           "make_variable_series"]
