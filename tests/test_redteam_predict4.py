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


# ---------------------------------------------------------------------------------------------- boolean labels
def _t(label):
    n = len(label)
    return {"patient_id": [f"p{i}" for i in range(n)], "label": label, "age": [50.0] * n, "split": ["test"] * n,
            "image_prob": np.linspace(0.1, 0.9, n)}


@pytest.mark.parametrize("label", [[True, False, True, False], np.array([True, False, True, False]),
                                   [1, 0, True, 0], [np.True_, 0, 1, 0]])
def test_boolean_labels_are_refused_in_python_as_in_the_csv(label):
    with pytest.raises(ConfigError, match="not True/False"):  # were read as 1/0
        ev.check_table(_t(label))


def test_csv_refuses_true_as_a_label(tmp_path):
    p = tmp_path / "p.csv"
    p.write_text("patient_id,label,age,split,image_prob\na,True,50,test,0.3\nb,0,50,test,0.6\n")
    with pytest.raises(ConfigError, match="label must be 0 .wildtype. or 1 .mutant., got 'True'"):
        ev.load_predictions(p)
