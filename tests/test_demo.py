"""The demo pipeline end to end (real extraction runner), and the shuffled-label null check: the test AUC must
come from the model learning the images, so with patient labels permuted it falls to chance."""
import pytest

from slidestream.engine import demo

TINY = dict(n_patients=24, size=(512, 384), mpp=1.0, epochs=4, bootstrap=0, log=None)  # 10x slides, ~20 s a run


@pytest.mark.slow
def test_demo_learns_and_shuffled_labels_fall_to_chance(tmp_path):
    real = demo.run(tmp_path / "real", heatmap=True, **TINY)
    assert demo.test_auc(real["metrics"]) >= 0.9
    assert (tmp_path / "real" / "report" / "report.md").is_file()
    assert real["heatmap"] and (tmp_path / "real" / "heatmaps").is_dir()
    null = demo.run(tmp_path / "null", heatmap=False, shuffle_labels=True, **TINY)
    aucs = [null["metrics"][s]["image"]["auc"] for s in ("val", "test")]
    assert all(abs(a - 0.5) <= 0.3 for a in aucs), aucs
