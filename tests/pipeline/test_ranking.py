"""The order of the series' variability summary."""

import numpy as np
from astropy.table import QTable

from astro_dia.pipeline._light_curves import rank_variability


def summary():
    return QTable({"id": [1, 2, 3, 4, 5],
                   "n_good": [100, 8, 90, 99, 100],
                   "chi2_robust": [2.0, 40.0, np.nan, 30.0, 500.0],
                   "near_saturated": [False, False, False, False, True]})


def test_variables_first_then_mostly_masked_then_near_saturated():
    ranked = rank_variability(summary(), n_epochs=101)
    # 4 (30) before 1 (2) before 3 (no chi2); 2 has 8 clean epochs of 101;
    # 5 is next to a saturated star, however large its chi2
    assert list(ranked["id"]) == [4, 1, 3, 2, 5]
    assert list(ranked["mostly_masked"]) == [False, False, False, True, False]


def test_the_input_is_not_changed():
    table = summary()
    rank_variability(table, n_epochs=101)
    assert "mostly_masked" not in table.colnames and list(table["id"]) == [1, 2, 3, 4, 5]


def test_half_the_epochs_is_enough():
    ranked = rank_variability(summary(), n_epochs=16)     # 8 of 16 clean
    assert not ranked["mostly_masked"][ranked["id"] == 2][0]
    assert list(ranked["id"][:2]) == [2, 4]
