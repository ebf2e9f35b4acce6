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

Since these settings belong to the whole process, a host program can turn
them off: for the process with the environment variable ``ASTRO_DIA_HEAP=0``
(also ``off``, ``false`` or ``no``; it is read at each fit, and reaches the
workers of a local dask cluster), or for the fits run inside a block with
`heap_reuse` (``with heap_reuse(False): imager.fit(...)``), which takes
precedence over the variable in its thread or task. The fit is then the
same, only slower on large frames.

Any ``mallopt`` call ends glibc's own adaptation of its thresholds for the
rest of the process, so the settings left behind are those that adaptation
reaches with large arrays: blocks above 32 MiB mapped (``M_MMAP_THRESHOLD``,
``M_MMAP_MAX`` at its default), the heap trimmed above 64 MiB of free
memory at its top.
"""

import contextvars
import ctypes
import os
import threading
from contextlib import contextmanager

from ..model._model import fft_shape
from ..model._torch import resolve_dtype

__all__ = ["heap_reuse", "HEAP_ENVIRONMENT_VARIABLE"]

#: Environment variable that turns the reuse off for the process (``ASTRO_DIA_HEAP=0``).
HEAP_ENVIRONMENT_VARIABLE = "ASTRO_DIA_HEAP"

_OFF_VALUES = ("0", "off", "false", "no")

# The setting of `heap_reuse` in the current thread or task; None: the environment decides.
_heap_reuse_setting = contextvars.ContextVar("astro_dia_heap_reuse", default=None)

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


@contextmanager
def heap_reuse(enabled=True):
    """
    Turn glibc's reuse of freed blocks during fits of large frames on or off for a block.

    On frames above about 2900 x 2900 pixels the fit asks glibc, for its
    duration, to serve its large blocks from the heap and reuse them
    (``mallopt``), instead of mapping and faulting in every block afresh;
    it is twice as fast there, and its peak memory grows by about a fifth.
    These settings are the process's, so a host program may prefer to keep
    its own: ``with heap_reuse(False):`` leaves glibc alone during the fits
    run inside it, in this thread or asyncio task.

    Parameters
    ----------
    enabled : bool, optional
        Whether fits inside the block may change glibc's settings (the
        default, also when the ``ASTRO_DIA_HEAP`` environment variable is
        not set). This takes precedence over ``ASTRO_DIA_HEAP``, which turns
        the reuse off for the whole process when set to ``0``, ``off``,
        ``false`` or ``no``.

    Examples
    --------
    >>> from astro_dia.fitting import heap_reuse
    >>> with heap_reuse(False):
    ...     pass   # imager.fit(reference, target) here leaves malloc's settings alone
    """
    token = _heap_reuse_setting.set(bool(enabled))
    try:
        yield
    finally:
        _heap_reuse_setting.reset(token)


def heap_reuse_enabled():
    """Whether a fit may change glibc's settings now: `heap_reuse`, else ``ASTRO_DIA_HEAP``."""
    setting = _heap_reuse_setting.get()
    if setting is not None:
        return setting
    value = os.environ.get(HEAP_ENVIRONMENT_VARIABLE, "1")
    return value.strip().lower() not in _OFF_VALUES


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
        blocks, and nothing is changed. Nothing is changed either when
        `heap_reuse_enabled` says no.
    """
    global _active
    libc = _glibc() if block_bytes > MMAP_CEILING and heap_reuse_enabled() else None
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
