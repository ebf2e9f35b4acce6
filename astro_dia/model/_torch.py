"""The one boundary between numpy/astropy objects and torch tensors (private)."""

from contextlib import contextmanager

import numpy as np
import torch

__all__ = []

_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
}


def resolve_device(device):
    """
    Turn a user's device request into a `torch.device`.

    Parameters
    ----------
    device : str or `torch.device`
        ``"auto"`` (CUDA when available, else the CPU), ``"cpu"``, ``"cuda"``,
        ``"cuda:N"`` or a `torch.device`.

    Returns
    -------
    device : `torch.device`

    Raises
    ------
    ValueError
        If the name is not a device torch knows, or CUDA is asked for and
        no CUDA device is present.
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} was requested but no CUDA device is available; "
            "use device='cpu' or device='auto' (CUDA when present, else the CPU)")
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(
            f"device must be a CPU or CUDA device, got {device!r}")
    return resolved


def resolve_dtype(dtype):
    """
    Turn a user's dtype request into a floating `torch.dtype`.

    Parameters
    ----------
    dtype : str, `numpy.dtype`, type or `torch.dtype`
        ``"float32"`` or ``"float64"`` in any of these spellings.

    Returns
    -------
    dtype : `torch.dtype`

    Raises
    ------
    ValueError
        For any other dtype (float16 and integers are not supported).
    """
    if isinstance(dtype, torch.dtype):
        name = str(dtype).replace("torch.", "")
    else:
        try:
            name = np.dtype(dtype).name
        except TypeError as exc:
            raise ValueError(
                f"dtype must be 'float32' or 'float64', got {dtype!r}") from exc
    if name not in _DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return _DTYPES[name]


def device_name(device):
    """
    Validate a device request and return its name, e.g. ``"cpu"`` or ``"cuda:0"``.

    What the public classes store and show; `resolve_device` turns the name
    back into a `torch.device` at the fit.
    """
    return str(resolve_device(device))


def dtype_name(dtype):
    """Validate a dtype request and return its name, ``"float32"`` or ``"float64"``."""
    return str(resolve_dtype(dtype)).replace("torch.", "")


def to_tensor(array, *, device, dtype):
    """Copy a numpy array (or scalar) into a new tensor on ``device``."""
    return torch.as_tensor(np.asarray(array, dtype=np.float64), device=device).to(dtype)


def to_numpy(tensor):
    """Copy a tensor back to a float64 numpy array."""
    return tensor.detach().to("cpu", torch.float64).numpy().copy()


@contextmanager
def flush_denormals():
    """
    Flush float denormals to zero for the duration of a fit.

    Denormal numbers appear as kernel pixels decay towards zero and can make
    CPU arithmetic several times slower; flushing them does not change any
    result at the precision of the data type. The setting is switched off
    again on exit (torch's default).
    """
    supported = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if supported:
            torch.set_flush_denormal(False)


@contextmanager
def exact_float32():
    """
    Full float32 precision in matrix products and convolutions for the duration of a fit.

    On NVIDIA GPUs torch may compute float32 products in TF32 (10-bit
    mantissa) when a program asked for it elsewhere
    (`torch.set_float32_matmul_precision`, ``torch.backends.cudnn.allow_tf32``);
    the normal matrix and the Fisher information need the full float32
    mantissa. The caller's settings are restored on exit. No effect on the CPU.
    """
    precision = torch.get_float32_matmul_precision()
    cudnn = torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)
        torch.backends.cudnn.allow_tf32 = cudnn


def _is_out_of_memory(error):
    """An allocation failure: CUDA's OutOfMemoryError, the CPU allocator's, numpy's."""
    out_of_memory = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    return isinstance(error, (out_of_memory, MemoryError)) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error))


@contextmanager
def out_of_memory_as_error(shape, kernel_size, device, error_class):
    """
    Turn torch's out-of-memory failures into ``error_class`` with what to change.

    Parameters
    ----------
    shape : tuple of int
        The image shape, named in the message.
    kernel_size : int
    device : str
        The fit's device name.
    error_class : type
        The exception to raise (the caller's `~astro_dia.exceptions.DIAError`).
    """
    try:
        yield
    except (RuntimeError, MemoryError) as error:
        if not _is_out_of_memory(error):
            raise
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        raise error_class(
            f"the fit of a {shape[0]} x {shape[1]} frame with a {kernel_size} x {kernel_size} "
            f"kernel ran out of memory on {device!r}; use solver='cg' (a few image-sized "
            f"buffers whatever the kernel), a smaller max_memory for solver='direct', "
            f"compute_errors=True rather than 'covariance', dtype='float32', or another "
            f"device") from error
