"""Large frames: glibc reuses the fit's freed buffers instead of mapping them afresh (private).

glibc's ``malloc`` serves every block above its mmap threshold, which it
raises to at most 32 MiB on 64-bit systems, with a fresh ``mmap`` and
returns it to the system with ``munmap`` when it is freed. On a frame whose
float32 image or half spectrum exceeds 32 MiB (about 2900 x 2900 pixels
and up), each FFT product of a fit allocates several such blocks, and every
page of each is faulted in anew: a 4000 x 4000 fit with a 19 x 19 kernel
took 22 million page faults and 47 s of system time out of 48 s.

`reused_large_blocks` asks glibc, for the duration of such a fit, to serve
all blocks from its heap (``mallopt(M_MMAP_MAX, 0)``), where a freed block
is reused by the next request of its size, and to keep the freed memory
meanwhile (``M_TRIM_THRESHOLD``); on exit it hands the freed pages back
(``malloc_trim(0)``). The same fit then takes 21 s, and its peak resident
memory grows by about a fifth. Concurrent fits (threads) share one
setting, restored when the last of them ends. Elsewhere (another C
library, a frame below the ceiling) nothing is changed.

Any ``mallopt`` call ends glibc's own adaptation of its thresholds for the
rest of the process, so the settings left behind are those that adaptation
reaches with large arrays: blocks above 32 MiB mapped (``M_MMAP_THRESHOLD``,
``M_MMAP_MAX`` at its default), the heap trimmed above 64 MiB of free
memory at its top.
"""

import ctypes
import threading
from contextlib import contextmanager

from ..model._model import fft_shape
from ..model._torch import resolve_dtype

__all__ = []

#: glibc's largest mmap threshold on 64-bit systems: blocks above it are
#: always mapped afresh (``DEFAULT_MMAP_THRESHOLD_MAX``).
MMAP_CEILING = 32 * 2 ** 20

# mallopt parameters (malloc.h) and the values set during and after a fit.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_KEEP = 2 ** 31 - 1
_DEFAULT_MMAP_MAX = 65536
_AFTER = ((_M_MMAP_THRESHOLD, MMAP_CEILING), (_M_TRIM_THRESHOLD, 2 * MMAP_CEILING),
          (_M_MMAP_MAX, _DEFAULT_MMAP_MAX))

_lock = threading.Lock()
_active = 0


def _glibc():
    """The process's C library if it is glibc (it has ``mallopt`` and ``malloc_trim``), else None."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version, libc.mallopt, libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError, TypeError):
        return None
    return libc


def _set(libc, settings):
    for parameter, value in settings:
        libc.mallopt(parameter, ctypes.c_int(value))


@contextmanager
def reused_large_blocks(block_bytes):
    """
    For the duration, glibc reuses freed blocks of the fit instead of unmapping them.

    Parameters
    ----------
    block_bytes : int
        The largest frame-sized block the fit allocates (its half spectrum,
        `spectrum_bytes`); below `MMAP_CEILING` glibc already reuses such
        blocks, and nothing is changed.
    """
    global _active
    libc = _glibc() if block_bytes > MMAP_CEILING else None
    if libc is None:
        yield
        return
    with _lock:
        if _active == 0:
            _set(libc, ((_M_TRIM_THRESHOLD, _KEEP), (_M_MMAP_MAX, 0)))
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                _set(libc, _AFTER)
                libc.malloc_trim(0)


def spectrum_bytes(shape, dtype):
    """Bytes of the half spectrum of a frame of ``shape`` at its FFT length, in ``dtype``."""
    ny, nx = fft_shape(shape)
    return ny * (nx // 2 + 1) * 2 * resolve_dtype(dtype).itemsize   # complex: two reals
