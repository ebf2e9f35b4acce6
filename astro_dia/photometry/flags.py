"""
Bit flags of the photometry tables.

The ``flags`` column of `~astro_dia.photometry.differential_photometry`,
`~astro_dia.photometry.aperture_photometry_difference` and
`~astro_dia.photometry.light_curve` is the bitwise OR of these values. Bits
1 to 2048 are those of `photutils.psf.PSF_FLAGS`, except bit 4 (non-positive
flux), which is never set: a negative flux is normal on a difference image.
"""

from ..flags import names_of_set_bits

__all__ = ["PHOTOMETRY_FLAGS", "decode_flags"]

#: Flag names and their bit values.
PHOTOMETRY_FLAGS = {
    "n_pixels_fit_partial": 1,     # photutils: fewer fitted pixels than the fit_shape box
    "outside_bounds": 2,           # photutils: fitted position outside the image
    "no_convergence": 8,           # photutils: the fit may not have converged
    "no_covariance": 16,           # photutils: no parameter covariance (no error)
    "near_bound": 32,              # photutils: a fitted position near its bound
    "no_overlap": 64,              # photutils: fit region has no valid pixel
    "fully_masked": 128,           # every pixel of the footprint is masked
    "too_few_pixels": 256,         # fewer good pixels than free parameters + 1
    "non_finite_position": 512,    # photutils
    "non_finite_flux": 1024,       # photutils
    "non_finite_localbkg": 2048,   # photutils
    "outside_image": 4096,         # the position is not on the image: no measurement
    "masked_pixels": 8192,         # masked or off-image pixels in the footprint
    "difference_failed": 16384,    # light_curve: the epoch could not be differenced
}

#: Flags after which the flux is NaN.
NO_MEASUREMENT = (PHOTOMETRY_FLAGS["outside_image"] | PHOTOMETRY_FLAGS["fully_masked"]
                  | PHOTOMETRY_FLAGS["too_few_pixels"] | PHOTOMETRY_FLAGS["difference_failed"])


def decode_flags(value):
    """
    The names of the flags set in ``value``.

    Parameters
    ----------
    value : int

    Returns
    -------
    names : list of str

    Examples
    --------
    >>> from astro_dia.photometry import decode_flags
    >>> decode_flags(4096 | 1)
    ['n_pixels_fit_partial', 'outside_image']
    """
    return names_of_set_bits(value, PHOTOMETRY_FLAGS.items())
