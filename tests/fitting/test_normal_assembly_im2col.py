"""The patch matrix of the dense assembly against torch's own unfold."""

import pytest
import torch
import torch.nn.functional as F

from astro_dia.fitting._normal import im2col


@pytest.mark.parametrize("shape, size", [((9, 12), 3), ((20, 20), 5), ((7, 7), 7), ((30, 11), 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_im2col_matches_unfold(shape, size, dtype):
    rows = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(3))
    expected = F.unfold(rows[None, None], size)[0]
    assert torch.equal(im2col(rows, size), expected)


def test_im2col_of_a_strip_view():
    """A slice of rows (a view with a storage offset) gives the patches of those rows."""
    image = torch.arange(15 * 10, dtype=torch.float64).reshape(15, 10)
    strip = image[4:10]
    patches = im2col(strip, 3)
    assert patches.shape == (9, 4 * 8)
    assert patches[0, 0] == image[4, 0] and patches[8, -1] == image[9, 9]


def test_im2col_is_a_copy_even_for_a_one_pixel_kernel():
    """The assembly scales the patches in place: they must never alias the image."""
    image = torch.ones((6, 5), dtype=torch.float32)
    patches = im2col(image, 1)
    patches.mul_(3.0)
    assert torch.equal(image, torch.ones((6, 5))) and torch.all(patches == 3.0)
