"""Red-team round 3 of the learning side: the numbers evaluate reports (bootstrap intervals, notes, fusion, metrics)
must be right, and bad input must end in one line naming the thing and the fix. Each test fails without the fix it
guards (see the commit messages)."""
import tracemalloc

import numpy as np
import pytest

from slidestream.engine import evaluate as ev
from slidestream.engine.errors import ConfigError


def _table(n, seed=0, split="test"):
    rng = np.random.default_rng(seed)
    return {"patient_id": [f"p{i}" for i in range(n)], "label": rng.integers(0, 2, n), "age": rng.uniform(20, 80, n),
            "split": [split] * n, "image_prob": rng.uniform(0, 1, n)}


# ---------------------------------------------------------------------------------------------- bootstrap memory
def test_bootstrap_in_blocks_gives_the_intervals_of_one_draw():
    """3000 resamples x 100 patients = 2 blocks of ``BLOCK`` indices: the intervals are those of the single
    (resamples x patients) draw evaluate made before, to the last bit."""
    t = _table(100)
    y, p = np.asarray(t["label"]), np.asarray(t["image_prob"])
    idx = np.random.default_rng([7, 1]).integers(0, 100, size=(3000, 100))  # split index 1: test
    want = {m: [float(np.percentile(v[np.isfinite(v)], q)) for q in (2.5, 97.5)]
            for m, v in ev.bootstrap_metrics(y, p, 0.5, idx).items()}
    assert 3000 * 100 > ev.BLOCK
    assert ev.evaluate(t, bootstrap=3000, seed=7)["test"]["image"]["ci"] == want


def _peak(bootstrap):
    t = _table(100)
    ev.evaluate(t, bootstrap=10)  # imports (scikit-learn, SciPy) outside the measurement
    tracemalloc.start()
    try:
        ev.evaluate(t, bootstrap=bootstrap)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_bootstrap_memory_does_not_grow_with_the_resamples():
    """All resamples x patients at once: 100,000 resamples of 400 patients peaked at 2.4 GB (tracemalloc); in
    blocks the peak is one block's, whatever the number of resamples."""
    small, large = _peak(3000), _peak(20000)  # before: 18 and 118 MiB; in blocks: 16 and 16 MiB
    assert large < 1.3 * small, (small, large)


@pytest.mark.parametrize("kw", [{"bootstrap": -5}, {"bootstrap": 2.5}, {"bootstrap": "10"}, {"bootstrap": True},
                                {"bootstrap": 100_001}, {"seed": 1.5}, {"seed": "x"}, {"seed": -1}, {"seed": None}])
def test_bad_bootstrap_count_or_seed_from_python_is_one_line(kw):
    """The CLI refused these (typer); the Python API ran 2 resamples for 2.5, and gave NumPy tracebacks for -5, -1
    or 'x' ('negative dimensions are not allowed', 'invalid literal for int()')."""
    with pytest.raises(ConfigError, match=rf"^{next(iter(kw))} must be a whole number from 0") as e:
        ev.evaluate(_table(20), **kw)
    assert "\n" not in str(e.value)
