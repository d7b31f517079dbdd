"""Red team, round 9: bad input that passed as good data (a run that reported success without a slide)."""
import json
import os
import subprocess

from conftest import slidestream_cmd
from badinputs import good_slide
from test_bad_inputs import _pipeline
from slidestream.engine.cohort import read_cohort


def test_a_folder_reports_slide_names_that_are_not_files(tmp_path):
    """A folder scan skipped a pipe, a link to a device and a broken link named like slides: the run exited 0
    with those slides neither extracted nor named anywhere. Now each is a slide that fails, naming why, and the
    scan never opens them (opening the pipe would wait forever)."""
    d = tmp_path / "slides"
    d.mkdir()
    good_slide(d / "good.svs")
    os.mkfifo(d / "pipe.svs")
    os.symlink("/dev/zero", d / "zero.tif")
    os.symlink(d / "gone.svs", d / "broken.svs")
    assert sorted(r.slide_id for r in read_cohort(d)) == ["broken", "good", "pipe", "zero"]
    out = tmp_path / "s.zarr"
    r = subprocess.run([*slidestream_cmd(), "extract", str(_pipeline(tmp_path)), "--slides", str(d), "--out", str(out), "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    got = {s["slide_id"]: s for s in json.loads(r.stdout)["slides"]}
    assert got["good"]["status"] == "done"
    assert "not a regular file" in got["pipe"]["reason"] and "not a regular file" in got["zero"]["reason"]
    assert "broken symbolic link" in got["broken"]["reason"]


def test_tiff_checks_in_two_threads_leave_tifffile_logging_as_it_was(tmp_path, monkeypatch):
    """check_tiff quiets the tifffile logger (propagate off) while it parses. Two slides checked at once
    (extract plans the next slide in a thread) each saved and restored it: A in (saves on), B in (saves off),
    A out (on), B out (off) left tifffile's warnings swallowed for the rest of the process."""
    import logging
    import threading

    import tifffile

    from slidestream.plugins.readers.common import check_tiff

    slide = good_slide(tmp_path / "a.svs")
    real = tifffile.TiffFile
    go = {"A": threading.Event(), "B": threading.Event()}
    inside = {"A": threading.Event(), "B": threading.Event()}

    def parse(path, *a, **k):
        name = threading.current_thread().name
        inside[name].set()
        go[name].wait(10)
        return real(path, *a, **k)

    monkeypatch.setattr(tifffile, "TiffFile", parse)
    log = logging.getLogger("tifffile")
    assert log.propagate
    threads = {n: threading.Thread(target=check_tiff, args=(str(slide),), name=n) for n in "AB"}
    threads["A"].start()
    assert inside["A"].wait(10)
    threads["B"].start()
    assert inside["B"].wait(10)
    go["A"].set()
    threads["A"].join(10)
    go["B"].set()
    threads["B"].join(10)
    assert log.propagate
