"""
The line-defect search of a series: the rows and columns it finds are those
whose median of D / sigma departs from 0, the median being computed only
where it can.
"""

import warnings

import numpy as np
import pytest
from astropy.nddata import CCDData, StdDevUncertainty

from astro_dia.pipeline import _line_defects
from astro_dia.pipeline._line_defects import line_defects


def _medians_everywhere(difference):
    """The rule applied to every row and column: a median of each."""
    data = np.asarray(difference.data, float)
    sigma = np.asarray(difference.uncertainty.array, float)
    valid = np.isfinite(data) & (sigma > 0) & ~np.asarray(difference.mask, bool)
    z = np.where(valid, data / np.where(valid, sigma, 1.0), np.nan)
    found = []
    for axis in (1, 0):
        count = valid.sum(axis=axis)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            median = np.nanmedian(z, axis=axis)
        error = 1.2533 / np.sqrt(np.maximum(count, 1))
        found.append(np.flatnonzero(
            (count >= _line_defects.MIN_LINE_PIXELS) & np.isfinite(median)
            & (np.abs(median) > _line_defects.LINE_MEDIAN)
            & (np.abs(median) > _line_defects.LINE_SIGMA * error)))
    return found


def _image(seed, shape=(200, 240)):
    rng = np.random.default_rng(seed)
    sigma = rng.uniform(0.5, 3.0, shape)
    data = rng.normal(0.0, 1.0, shape) * sigma
    mask = rng.random(shape) < 0.05
    mask[:, :rng.integers(0, 40)] = True        # lines of many lengths, odd and even
    mask[rng.integers(0, shape[0], 5)] = True   # whole masked rows
    return data, sigma, mask


@pytest.mark.parametrize("seed", range(8))
def test_same_lines_as_a_median_of_every_line(seed):
    data, sigma, mask = _image(seed)
    rng = np.random.default_rng(100 + seed)
    ny, nx = data.shape
    # Bands near the bar (0.3 sigma, or 8 errors of the median), both signs.
    for row in rng.choice(ny, 12, replace=False):
        data[row] += rng.uniform(-1.2, 1.2) * sigma[row]
    for column in rng.choice(nx, 12, replace=False):
        data[:, column] += rng.uniform(-1.2, 1.2) * sigma[:, column]
    # Half the valid pixels far above, half just below: the median is the
    # mean of the two middle values, on either side of the bar.
    for row, low in zip(rng.choice(ny, 6, replace=False), (-0.2, -0.8, -1.5, 0.2, 0.6, 1.0)):
        valid = np.flatnonzero(~mask[row])
        valid = valid[:len(valid) - len(valid) % 2]
        mask[row] = True
        mask[row, valid] = False
        data[row, valid[::2]] = 3.0 * sigma[row, valid[::2]]
        data[row, valid[1::2]] = low * sigma[row, valid[1::2]]
    difference = CCDData(data, unit="adu", uncertainty=StdDevUncertainty(sigma), mask=mask)
    rows, columns = line_defects(difference)
    expected_rows, expected_columns = _medians_everywhere(difference)
    assert len(expected_rows) + len(expected_columns) > 0
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_array_equal(columns, expected_columns)


def test_half_beyond_the_bar_is_decided_by_the_median():
    # 100 valid pixels in a row (bar 8 * 1.2533 / 10 = 1.0): 50 at +3 and 50 at
    # -0.9 give a median of 1.05 (a defect), 50 at -1.1 a median of 0.95 (none);
    # the first row is noise-free and flat.
    data = np.zeros((3, 100))
    data[1:, ::2] = 3.0
    data[1, 1::2] = -0.9
    data[2, 1::2] = -1.1
    difference = CCDData(data, unit="adu", uncertainty=StdDevUncertainty(np.ones_like(data)),
                         mask=np.zeros(data.shape, bool))
    rows, columns = line_defects(difference)
    assert list(rows) == [1]
    assert list(columns) == []
