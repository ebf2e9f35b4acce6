"""glibc's reuse of large freed blocks during fits of large frames (astro_dia.fitting._heap)."""

import threading

import numpy as np
import pytest

from astro_dia import DifferenceImager
from astro_dia.fitting import _heap
from astro_dia.simulate import make_image_pair


class FakeGlibc:
    """Records the mallopt and malloc_trim calls."""

    def __init__(self):
        self.calls = []

    def mallopt(self, parameter, value):
        self.calls.append(("mallopt", parameter, value.value))
        return 1

    def malloc_trim(self, pad):
        self.calls.append(("malloc_trim", pad))
        return 1


@pytest.fixture
def glibc(monkeypatch):
    fake = FakeGlibc()
    monkeypatch.setattr(_heap, "_glibc", lambda: fake)
    return fake


SET = [("mallopt", _heap._M_TRIM_THRESHOLD, _heap._KEEP), ("mallopt", _heap._M_MMAP_MAX, 0)]
# what glibc's own adaptation reaches with large arrays, then the freed pages back
RESTORE = [("mallopt", _heap._M_MMAP_THRESHOLD, 32 * 2 ** 20),
           ("mallopt", _heap._M_TRIM_THRESHOLD, 64 * 2 ** 20),
           ("mallopt", _heap._M_MMAP_MAX, 65536), ("malloc_trim", 0)]


def test_spectrum_bytes():
    assert _heap.spectrum_bytes((4000, 4000), "float32") == 4000 * 2001 * 8
    assert _heap.spectrum_bytes((1000, 1000), "float64") == 1000 * 501 * 16
    # 4000 x 4000 is above glibc's ceiling, 2000 x 2000 below
    assert _heap.spectrum_bytes((4000, 4000), "float32") > _heap.MMAP_CEILING
    assert _heap.spectrum_bytes((2000, 2000), "float32") < _heap.MMAP_CEILING


def test_frames_below_the_ceiling_change_nothing(glibc):
    with _heap.reused_large_blocks(_heap.MMAP_CEILING):
        pass
    assert glibc.calls == []


def test_large_frames_set_and_restore_even_after_an_error(glibc):
    with pytest.raises(RuntimeError):
        with _heap.reused_large_blocks(_heap.MMAP_CEILING + 1):
            assert glibc.calls == SET
            raise RuntimeError("the fit failed")
    assert glibc.calls == SET + RESTORE


def test_concurrent_fits_share_one_setting(glibc):
    inside, release = threading.Barrier(3), threading.Event()

    def fit():
        with _heap.reused_large_blocks(2 * _heap.MMAP_CEILING):
            inside.wait()
            release.wait()

    threads = [threading.Thread(target=fit) for _ in range(2)]
    for thread in threads:
        thread.start()
    inside.wait()
    assert glibc.calls == SET          # set once, by the first
    release.set()
    for thread in threads:
        thread.join()
    assert glibc.calls == SET + RESTORE   # restored once, by the last


def test_no_glibc_changes_nothing(monkeypatch):
    monkeypatch.setattr(_heap, "_glibc", lambda: None)
    with _heap.reused_large_blocks(10 * _heap.MMAP_CEILING):
        pass


@pytest.mark.skipif(_heap._glibc() is None, reason="needs glibc")
def test_a_fit_with_the_real_setting_in_a_thread_is_the_same_fit(monkeypatch):
    reference, target, _ = make_image_pair(shape=(96, 96), seed=4)
    imager = DifferenceImager(9, flat=1, sky=0)
    expected = imager.fit(reference, target)
    # every frame counts as large: the real mallopt calls, in a worker thread
    monkeypatch.setattr(_heap, "MMAP_CEILING", 0)
    results = []
    worker = threading.Thread(target=lambda: results.append(imager.fit(reference, target)))
    worker.start()
    worker.join()
    # the same fit up to float32 rounding (a thread may have its own OpenMP team size)
    assert results[0].scale_factor == pytest.approx(expected.scale_factor, rel=1e-5)
    sigma = np.nanmedian(expected.difference.uncertainty.array)
    np.testing.assert_allclose(results[0].difference.data, expected.difference.data,
                               rtol=0, atol=1e-3 * sigma)
    assert _heap._active == 0


# -- the off switch: heap_reuse and ASTRO_DIA_HEAP --------------------------------------

@pytest.mark.parametrize("value", ["0", "off", "False", " no "])
def test_the_environment_variable_turns_the_reuse_off(glibc, monkeypatch, value):
    monkeypatch.setenv("ASTRO_DIA_HEAP", value)
    with _heap.reused_large_blocks(2 * _heap.MMAP_CEILING):
        pass
    assert glibc.calls == []


@pytest.mark.parametrize("value", ["1", "on", ""])
def test_other_values_of_the_environment_variable_leave_it_on(glibc, monkeypatch, value):
    monkeypatch.setenv("ASTRO_DIA_HEAP", value)
    with _heap.reused_large_blocks(2 * _heap.MMAP_CEILING):
        pass
    assert glibc.calls == SET + RESTORE


def test_heap_reuse_false_turns_it_off_inside_the_block_only(glibc):
    from astro_dia.fitting import heap_reuse

    with heap_reuse(False):
        with _heap.reused_large_blocks(2 * _heap.MMAP_CEILING):
            pass
        assert glibc.calls == []
    with _heap.reused_large_blocks(2 * _heap.MMAP_CEILING):
        pass
    assert glibc.calls == SET + RESTORE


def test_heap_reuse_takes_precedence_over_the_environment(glibc, monkeypatch):
    from astro_dia.fitting import heap_reuse

    monkeypatch.setenv("ASTRO_DIA_HEAP", "0")
    with heap_reuse(True):
        with _heap.reused_large_blocks(2 * _heap.MMAP_CEILING):
            pass
    assert glibc.calls == SET + RESTORE


def test_heap_reuse_is_scoped_to_its_thread(glibc):
    from astro_dia.fitting import heap_reuse

    def fit():
        with _heap.reused_large_blocks(2 * _heap.MMAP_CEILING):
            pass

    with heap_reuse(False):
        thread = threading.Thread(target=fit)
        thread.start()
        thread.join()
        fit()
    assert glibc.calls == SET + RESTORE     # the other thread's fit only


def test_a_fit_inside_heap_reuse_false_changes_nothing(glibc, monkeypatch):
    from astro_dia.fitting import heap_reuse

    # Every frame counts as large, so the fit would set glibc's options.
    monkeypatch.setattr(_heap, "MMAP_CEILING", 0)
    reference, target, _ = make_image_pair(shape=(64, 64), seed=4)
    imager = DifferenceImager(5, flat=1, sky=0)
    with heap_reuse(False):
        imager.fit(reference, target)
    assert glibc.calls == []
    imager.fit(reference, target)
    assert glibc.calls == SET + RESTORE
