"""rt5lock: one writer per output folder (train, mil train, gan train)."""
import json
import signal
import subprocess
import sys

import pytest

HOLD = ("import sys, time\nfrom slidestream.engine.store import lock_output\n"
        "with lock_output(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)")


@pytest.mark.parametrize("cmd", [["train"], ["mil", "train"], ["gan", "train"]])
def test_second_writer_of_an_output_folder_is_refused_and_a_dead_ones_lock_taken_over(tmp_path, cli, cmd):
    from slidestream.engine import config

    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        args = [*cmd, config.example("liu2020"), "--out", out, "--store" if cmd[0] != "mil" else "--features",
                tmp_path / "missing.zarr", *(["--label", "mutant"] if cmd[0] == "gan" else [])]
        code, _, err = cli(*args)
        assert code != 0
        assert f"output folder {out} is being written by pid {holder.pid}" in err, err
        assert "\n" not in err.strip()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the holder died without releasing: the next writer takes its lock over (then fails on the missing store)
    lock = out.with_name("run.lock")
    assert json.loads(lock.read_text())["pid"] == holder.pid
    code, _, err = cli(*args)
    assert code != 0 and "is being written" not in err, err
    assert not lock.exists()  # taken over, then released when the command ended (on its error too)


def test_the_lock_is_released_when_the_writer_exits(tmp_path):
    out = tmp_path / "run"
    code = ("import sys\nfrom slidestream.engine.store import lock_output\nwith lock_output(sys.argv[1]):\n"
            "    import pathlib\n    assert pathlib.Path(sys.argv[1] + '.lock').is_file()")
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, timeout=60)
    assert not out.with_name("run.lock").exists()


def test_ages_read_from_a_store_are_the_cohorts_decimals_in_predictions_csv(tmp_path):
    import numpy as np

    from slidestream.engine import evaluate
    from slidestream.engine.store import PatchStore
    from slidestream.engine.train import patient_table, write_predictions

    st = PatchStore.create(tmp_path / "s", 8, {"chunk": 4}, {"extraction_hash": "h"})
    for i, age in enumerate((62.3, 47.1)):
        st.append(f"s{i}", np.zeros((2, 8, 8, 3), np.uint8),
                  {"slide_id": f"s{i}", "patient_id": f"p{i}", "label": i, "age": age, "split": "test"}, {"status": "done"})
    tab = PatchStore.open(tmp_path / "s").table()
    assert tab["age"][0] == 62.3  # not the float32 image 62.29999923706055
    write_predictions(tmp_path / "p.csv", patient_table(tab, np.arange(4), np.full(4, 0.5), {}))
    text = (tmp_path / "p.csv").read_text()
    assert ",62.3," in text and ",47.1," in text, text
    assert list(evaluate.load_predictions(tmp_path / "p.csv")["age"]) == [62.3, 47.1]


def test_a_predictions_csv_without_split_says_how_to_add_it(tmp_path):
    from slidestream.engine import evaluate
    from slidestream.engine.errors import ConfigError

    p = tmp_path / "other_tool.csv"
    p.write_text("patient_id,label,age,image_prob\np0,1,40,0.9\np1,0,70,0.2\n")
    with pytest.raises(ConfigError, match="add a split column: test on every row for held-out predictions"):
        evaluate.load_predictions(p)


def test_a_store_with_only_some_of_the_bundles_val_patients_is_not_called_missing():
    import numpy as np

    from slidestream.engine import evaluate
    from slidestream.engine.errors import ConfigError

    t = {"patient_id": np.array(["v1", "t1"]), "split": np.array(["val", "test"])}
    trained = {"train": {"patients": ["a"]}, "val": {"patients": ["v1", "v2"]}}
    with pytest.raises(ConfigError) as e:
        evaluate.check_leakage(t, trained)
    msg = str(e.value)
    assert "holds 1 patient(s) but not 1 of the bundle's val split (first: 'v2')" in msg and "mark those rows train" in msg


def test_train_and_evaluate_agree_on_youden_thresholds_and_fusion_through_the_csv(tmp_path):
    import numpy as np

    from slidestream.engine import evaluate
    from slidestream.engine.evaluate import apply_fusion, fit_fusion, youden_threshold
    from slidestream.engine.store import years
    from slidestream.engine.train import write_predictions

    rng = np.random.default_rng(0)
    n = 40
    label = np.arange(n) % 2
    ptab = {"patient_id": np.array([f"p{i}" for i in range(n)]), "label": label,
            "age": years(np.float32(rng.uniform(20, 80, n).round(1))),  # as train reads them from the store
            "split": np.array(["val" if i < 20 else "test" for i in range(n)]),
            "image_prob": np.clip(0.3 * label + rng.uniform(0, 0.7, n), 0, 1)}
    fusion = fit_fusion(ptab, "age_gda", None, "val")  # what train does
    val = ptab["split"] == "val"
    scores = {"image": ptab["image_prob"], **apply_fusion(fusion, ptab)}
    youden = {k: youden_threshold(ptab["label"][val], v[val]) for k, v in scores.items()}
    write_predictions(tmp_path / "p.csv", ptab)
    t = evaluate.load_predictions(tmp_path / "p.csv")
    m = evaluate.evaluate(t, threshold="youden", bootstrap=0, fitted=fusion)
    assert m["meta"]["thresholds"] == pytest.approx(youden, abs=0)
    again = apply_fusion(fusion, t)
    assert all(np.array_equal(again[k], scores[k]) for k in again)
