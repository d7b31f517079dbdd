"""Red team: held-out predictions (predict -> evaluate on new patients) and the learning leftovers."""
from __future__ import annotations

import numpy as np
import pytest

from slidestream.engine import evaluate as ev
from slidestream.engine import experiment
from slidestream.engine.errors import ConfigError


@pytest.mark.parametrize("counts", [[0, 2.5], [True], ["2.5"]])
def test_gan_sweep_refuses_counts_that_are_not_whole(tmp_path, counts):
    with pytest.raises(ConfigError, match="whole numbers"):  # 2.5 was trained as 2
        experiment.gan_sweep({}, tmp_path / "no-store", counts, tmp_path / "out", log=None)
