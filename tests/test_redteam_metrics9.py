"""Round 9 red team: numbers of `evaluate` recomputed independently (bench/recompute_metrics.py) disagreed."""
import numpy as np

from slidestream.engine import evaluate as ev


def test_youden_tie_is_broken_by_rule_not_by_float_rounding():
    """Val: 14 mutants, 14 wildtypes. Threshold 0.9 calls 8 mutants and no wildtype (J = 8/14); 0.6 calls 9 and 1
    (J = 9/14 - 1/14 = 8/14, equal). In floats 9/14 - 1/14 > 8/14, so argmax took 0.6; the documented rule
    (equal maxima: the highest threshold) gives 0.9, and the test metrics follow it."""
    val_y = [1] * 14 + [0] * 14
    val_p = [0.9] * 8 + [0.6] + [0.1] * 5 + [0.6] + [0.1] * 13
    test_y, test_p = [1, 1, 0, 0], [0.95, 0.7, 0.7, 0.2]
    n = len(val_y) + len(test_y)
    t = {"patient_id": [f"p{i}" for i in range(n)], "label": val_y + test_y, "age": [50.0] * n,
         "split": ["val"] * len(val_y) + ["test"] * len(test_y), "image_prob": val_p + test_p}
    assert ev.youden_threshold(np.array(val_y), np.array(val_p)) == 0.9
    m = ev.evaluate(t, threshold="youden", bootstrap=0)
    assert m["meta"]["thresholds"]["image"] == 0.9
    assert (m["val"]["image"]["sensitivity"], m["val"]["image"]["specificity"]) == (8 / 14, 1.0)
    assert (m["test"]["image"]["sensitivity"], m["test"]["image"]["specificity"]) == (0.5, 1.0)


def test_youden_without_labelled_val_rows_does_not_say_there_are_none():
    """Val rows whose labels are all unknown (-1): the refusal said 'there are no val rows' of a table that has 3."""
    import pytest

    from slidestream.engine.errors import ConfigError

    t = {"patient_id": ["v1", "v2", "v3", "s1", "s2"], "label": [-1, -1, -1, 1, 0], "age": [50.0] * 5,
         "split": ["val"] * 3 + ["test"] * 2, "image_prob": [0.2, 0.6, 0.9, 0.7, 0.1]}
    with pytest.raises(ConfigError, match=r"no labelled val rows \(its 3 patient\(s\) have label -1/empty\)"):
        ev.evaluate(t, threshold="youden", bootstrap=0)
