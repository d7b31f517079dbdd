"""Red team, round 10: the bad-input corpus of tests/badcorpus.py swept through the CLI; each test here is a case
that went wrong before its fix (the sweep's other cases were fine or are covered by earlier rounds)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

import badcorpus as C
from slidestream.engine.cohort import read_cohort
from slidestream.engine.errors import ConfigError


def _cli(*args, cwd=None):
    r = subprocess.run([sys.executable, "-m", "slidestream.engine", *map(str, args)], capture_output=True, text=True,
                       timeout=120, cwd=cwd)
    return r.returncode, r.stdout, r.stderr


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("c10")
    return d, C.small_pipeline(d), C.good_slide(d / "good.svs")


# ------------------------------------------------------------------- 1. a quoted cohort cell over two lines
def test_a_quoted_cell_over_two_lines_is_refused_with_its_line_not_joined_into_another_slide(small, tmp_path):
    """The CSV was split into lines before the csv module saw it, so a quoted cell's line break was dropped: a slide
    file named 'new<LF>line.svs' became 'newline.svs' (a different file, extracted in its place), and a quote closed
    one line late joined two rows into one slide_path. The check for a cell over several lines never fired."""
    d, pipe, good = small
    (tmp_path / "new\nline.svs").write_bytes(good.read_bytes())
    C.good_slide(tmp_path / "newline.svs", seed=5)  # the other file the joined name points at
    csvp = C.cohort_csv(tmp_path / "c.csv", [(str(good), "p1", 1, 50), (str(tmp_path / "new\nline.svs"), "p2", 0, 60)])
    rc, out, err = _cli("extract", pipe, "--slides", csvp, "--out", tmp_path / "s.zarr", "--json")
    assert rc == 2, err
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert "line 4: a quoted cell runs over several lines" in err and "rename the file" in err
    assert not (tmp_path / "s.zarr").exists()  # refused before any work: newline.svs was not extracted

    late = tmp_path / "late.csv"  # a quote opened on line 2 and closed on line 3
    late.write_text(f'slide_path,patient_id,label,age\n"{good},p1,1,50\n{good}",p2,0,60\n')
    with pytest.raises(ConfigError, match=r"late.csv: 1 problem: line 3: a quoted cell runs over several lines"):
        read_cohort(late)
    crlf = tmp_path / "crlf.csv"  # ordinary CRLF files and quoted cells on one line are unchanged
    crlf.write_bytes(f'slide_path,patient_id,label,age\r\n"{good}",p1,1,50\r\n'.encode())
    assert [r.slide_path for r in read_cohort(crlf)] == [str(good)]


# ------------------------------------------------------------------- 2. seeds past what torch takes
BIG = 2 ** 64  # torch.manual_seed refuses it: 'Overflow when unpacking long long'


@pytest.mark.parametrize("where", [("training", "seed"), ("mil", "seed"), ("seed",), ("training", "split", "seed")])
def test_a_seed_over_2_to_the_32_is_refused_by_the_schema(tmp_path, where):
    doc: dict = {"name": "s"}
    node = doc
    for k in where[:-1]:
        node = node.setdefault(k, {})
    node[where[-1]] = BIG
    p = tmp_path / "p.json"
    p.write_text(json.dumps(doc))
    rc, out, err = _cli("validate", p)
    assert rc == 2 and f"$.{'.'.join(where)}: {BIG} is greater than the maximum of 4294967295" in out + err


def test_train_with_a_huge_seed_is_one_line_not_a_traceback(tmp_path):
    """training.seed 2^64 (pipeline) or --seed 2^64 passed the schema and the CLI, then torch.manual_seed ended the
    run in a ValueError traceback after the store was opened."""
    from slidestream.engine import splits
    from slidestream.engine.synthetic import make_store

    st = make_store(tmp_path / "s", n_patients=8, per_patient=2, patch=32)
    splits.split_store(st, (2, 1, 1), seed=0)
    doc = {"name": "s", "classifier": {"name": "small_cnn", "params": {"width": 8}},
           "training": {"epochs": 1, "batch_size": 8, "num_workers": 1}}
    p = tmp_path / "p.json"
    p.write_text(json.dumps(doc))
    rc, out, err = _cli("train", p, "--store", st.path, "--out", tmp_path / "m", "--seed", BIG)
    assert rc == 2 and "Traceback" not in err and err.strip().count("\n") == 0
    assert "'--seed'" in err and "4294967295" in err
    doc["training"]["seed"] = BIG
    p.write_text(json.dumps(doc))
    rc, out, err = _cli("train", p, "--store", st.path, "--out", tmp_path / "m")
    assert rc == 2 and "Traceback" not in err and "$.training.seed" in err
    assert not (tmp_path / "m" / "small_cnn").exists()


# ------------------------------------------------------------------- 3. --slides given something that is no CSV
def test_slides_option_names_a_pipe_a_bmp_photo_and_a_compressed_slide_for_what_they_are(small, tmp_path):
    """`--slides fifo.svs` said 'no such file or folder' (it exists); `--slides photo.bmp` was read as a cohort CSV
    ('not UTF-8 text; save the table as CSV UTF-8') although the image reader reads BMP in a CSV; `--slides x.svs.gz`
    was told to save itself as CSV UTF-8."""
    import os

    from PIL import Image

    d, pipe, good = small
    os.mkfifo(tmp_path / "fifo.svs")
    rc, out, err = _cli("extract", pipe, "--slides", tmp_path / "fifo.svs", "--out", tmp_path / "a.zarr")
    assert rc == 2 and "fifo.svs: not a regular file (a pipe, device or socket)" in err, err

    Image.open(good).convert("RGB").save(tmp_path / "photo.bmp")
    rc, out, err = _cli("extract", pipe, "--slides", tmp_path / "photo.bmp", "--out", tmp_path / "b.zarr", "--json")
    assert rc == 1 and "photo.bmp: no resolution metadata" in err and "--mpp" in err, err  # read as the slide it is
    rc, out, err = _cli("extract", pipe, "--slides", tmp_path / "photo.bmp", "--out", tmp_path / "b.zarr", "--json",
                        "--mpp", "0.5")
    assert rc == 0 and json.loads(out)["slides"][0]["status"] in ("done", "empty"), err
    assert str(tmp_path / "photo.bmp") in [r.slide_path for r in read_cohort(tmp_path)]  # a folder finds it too

    import gzip

    (tmp_path / "s.svs.gz").write_bytes(gzip.compress(good.read_bytes()))
    rc, out, err = _cli("extract", pipe, "--slides", tmp_path / "s.svs.gz", "--out", tmp_path / "c.zarr")
    assert rc == 2 and "s.svs.gz: " in err and "no cohort CSV" in err and "or give a slide" in err, err
    assert err.count("\n") == 1


# ------------------------------------------------------------------- 4. a NUL byte in the cohort CSV
@pytest.mark.parametrize("row", ["{good},p1,1,50\n\0\n", "{good}\0,p1,1,50\n"])
def test_a_nul_byte_in_the_cohort_is_one_line_naming_its_line(small, tmp_path, row):
    """A NUL in a slide_path ended `extract` in a ValueError traceback (os.path.realpath: embedded null byte); the
    csv module of Python 3.11 lets NUL through."""
    d, pipe, good = small
    c = tmp_path / "c.csv"
    c.write_text("slide_path,patient_id,label,age\n" + row.format(good=good))
    rc, out, err = _cli("extract", pipe, "--slides", c, "--out", tmp_path / "s.zarr")
    assert rc == 2 and "Traceback" not in err and err.count("\n") == 1, err
    assert f"c.csv: line {2 + row.startswith('{good},')} holds a NUL byte" in err and "give a slide" not in err
    assert not (tmp_path / "s.zarr").exists()


# ------------------------------------------------------------------- 5. weights files that are no weights
@pytest.mark.parametrize("body,why", [(b"", r"is empty \(0 bytes\)"), (b"hello\n", r"cannot read weights file .*w\.pth"),
                                      (b"junk", r"cannot read weights file .*w\.safetensors \(SafetensorError")])
def test_a_weights_file_that_holds_no_weights_is_one_line(tmp_path, body, why):
    """training.weights (train) and features --weights given an empty, text or cut file: train ended in a KeyError,
    UnpicklingError or SafetensorError traceback (torch.load was not guarded) or, for an empty file, in 'error:
    aborted' (click turns the EOFError into Abort); features ended in an IndexError traceback (the empty message
    of torch.load's EOFError had no first line)."""
    import re

    from slidestream.engine import splits
    from slidestream.engine.synthetic import make_store

    st = make_store(tmp_path / "s", n_patients=8, per_patient=2, patch=32)
    splits.split_store(st, (2, 1, 1), seed=0)
    st.close()  # its lock: features refuses a store being written
    w = tmp_path / ("w.safetensors" if body == b"junk" else "w.pth")
    w.write_bytes(body)
    doc = {"name": "s", "classifier": {"name": "small_cnn", "params": {"width": 8}},
           "training": {"epochs": 1, "batch_size": 8, "num_workers": 1, "weights": str(w)}}
    p = tmp_path / "p.json"
    p.write_text(json.dumps(doc))
    rc, out, err = _cli("train", p, "--store", st.path, "--out", tmp_path / "m")
    assert rc == 2 and "Traceback" not in err and err.count("\n") == 1 and re.search(why, err), err
    assert "training.weights" in err
    if body != b"junk":
        rc, out, err = _cli("features", p, "--store", st.path, "--out", tmp_path / "f.zarr", "--encoder",
                            "resnet50_trunc", "--weights", w)
        assert rc == 2 and "Traceback" not in err and err.count("\n") == 1 and re.search(why, err), err
        assert "encoder 'resnet50_trunc'" in err


# ------------------------------------------------------------------- 6. a path relative to the cwd, not to the CSV
def test_a_slide_path_relative_to_the_cwd_instead_of_the_csv_is_named_before_any_work(small, tmp_path):
    """Relative paths are relative to the CSV's folder; one written relative to the current folder (where it
    exists) failed at extraction as 'file not found; check slide_path', leaving the user to guess why."""
    import shutil

    d, pipe, good = small
    (tmp_path / "slides").mkdir()
    (tmp_path / "tables").mkdir()
    shutil.copy(good, tmp_path / "slides" / "a.svs")
    c = C.cohort_csv(tmp_path / "tables" / "c.csv", [("slides/a.svs", "p1", 1, 50)])
    rc, out, err = _cli("extract", pipe, "--slides", c, "--out", tmp_path / "s.zarr", cwd=tmp_path)
    assert rc == 2 and err.count("\n") == 1, err
    assert "line 2: slide_path 'slides/a.svs' is not in the CSV's folder" in err and "or absolute" in err
    assert not (tmp_path / "s.zarr").exists()
    c.write_text("slide_path,patient_id,label,age\n../slides/a.svs,p1,1,50\n")  # relative to the CSV: fine
    assert [r.slide_path for r in read_cohort(c)] == [str(tmp_path / "tables" / "../slides/a.svs")]


# ------------------------------------------------------------------- 7. file names that are rich markup or hold a newline
def test_slide_names_with_markup_or_a_newline_print_as_they_are_on_one_line(small, tmp_path):
    """extract's per-slide lines and summary table went through rich markup: a bad slide at 'x[/bold].svs' (a folder
    named 'x[') ended the run in a MarkupError traceback, '[red]' vanished from a shown name, and a name with a line
    break split its error line in two."""
    d, pipe, good = small
    f = tmp_path / "f"
    (f / "x[").mkdir(parents=True)
    cut = good.read_bytes()[:1000]
    for name in ("x[/bold].svs", "y[red]z.svs", "new\nline.svs"):
        (f / name).write_bytes(cut)
    rc, out, err = _cli("extract", pipe, "--slides", f, "--out", tmp_path / "s.zarr", "--quiet")
    assert rc == 1 and "Traceback" not in err, err
    lines = [x for x in err.splitlines() if x.startswith("error ")]
    assert sorted(lines) == sorted(f"error {f}/{n}: truncated file: TIFF directories point past the end of the file"
                                   for n in ("x[/bold].svs", "y[red]z.svs", "new\\nline.svs")), err
    assert "y[red]z" in out and "bold]" in out  # the summary table shows the ids as they are
    assert all(x.startswith(("error ", "warning ")) for x in err.splitlines()), err  # the copies' warning too


# ------------------------------------------------------------------- 8. predict --mpp as extract checks it
def test_predict_refuses_an_mpp_that_is_no_resolution_as_extract_does(small, tmp_path):
    """`predict BUNDLE SLIDE --mpp nan` ignored the value silently (NaN stands for 'not given' inside) and used the
    file's own; --mpp 0 blamed the slide ('SLIDE: mpp must be positive'). extract refuses both before any work."""
    from slidestream.engine import splits, train
    from slidestream.engine.synthetic import make_store

    d, pipe, good = small
    st = make_store(tmp_path / "s", n_patients=8, per_patient=2, patch=32)
    splits.split_store(st, (2, 1, 1), seed=0)
    st.close()
    doc = {"name": "s", "classifier": {"name": "small_cnn", "params": {"width": 8}},
           "training": {"epochs": 1, "batch_size": 8, "num_workers": 1}}
    train.train(doc, st.path, tmp_path / "m", log=None)
    for bad in ("nan", "0", "inf", "-2"):
        rc, out, err = _cli("predict", tmp_path / "m" / "small_cnn", good, f"--mpp={bad}", "--out", tmp_path / "h")
        assert rc == 2 and err.startswith(f"error: --mpp {bad}: not a resolution") and err.count("\n") == 1, (bad, err)


# ------------------------------------------------------------------- 9. zero-filled files of one size
def _rchar() -> int:
    with open("/proc/self/io") as f:
        return next(int(x.split()[1]) for x in f if x.startswith("rchar"))


def test_zero_filled_files_of_one_size_are_not_read_whole_as_possible_copies(tmp_path):
    """Two zero-filled files of one size (preallocated downloads that never came) agree in size and in their first
    and last 64 KiB, so the copy check read both to the end before any slide was opened: two 8 GB sparse files took
    40 s of reading, silent. A file whose first 64 KiB is one byte value is no slide; it is not compared."""
    from slidestream.engine.cohort import identical_copies

    for n in ("z1.svs", "z2.svs"):
        with open(tmp_path / n, "wb") as f:
            f.truncate(256 << 20)
    (tmp_path / "c.csv").write_text("slide_path,patient_id,label,age\nz1.svs,p1,1,50\nz2.svs,p2,0,40\n")
    rows = read_cohort(tmp_path / "c.csv")
    before = _rchar()
    assert identical_copies(rows) == []
    assert _rchar() - before < 1 << 20  # read: their first 64 KiB (was 512 MiB)
    (tmp_path / "z2.svs").write_bytes(b"II*\0" + bytes(1 << 17))  # a real copy check is unchanged
    (tmp_path / "z1.svs").write_bytes(b"II*\0" + bytes(1 << 17))
    assert [(a.slide_path, b.slide_path) for a, b in identical_copies(rows)] == [(rows[0].slide_path, rows[1].slide_path)]


# ------------------------------------------------------------------- 10. a big binary file given as --slides
@pytest.mark.parametrize("head,why", [(b"ZISRAWFILE" + bytes(100), "line 1 holds a NUL byte"),
                                      (b"\xff" * 70000, "not UTF-8 text (byte 0)")])
def test_a_big_binary_file_given_as_slides_is_refused_on_its_first_bytes(small, tmp_path, head, why):
    """`--slides x.czi` (a format no reader takes) was read whole into memory as a would-be CSV and decoded: a 3 GB
    file took 20 s and 6.3 GB of RSS before 'not UTF-8 text'. It is refused on its first 64 KiB."""
    d, pipe, good = small
    with open(tmp_path / "x.czi", "wb") as f:
        f.write(head)
        f.truncate(512 << 20)
    r = subprocess.run(["/usr/bin/time", "-f", "%M", sys.executable, "-m", "slidestream.engine", "extract", pipe,
                        "--slides", tmp_path / "x.czi", "--out", tmp_path / "s.zarr"], capture_output=True, text=True,
                       timeout=120)
    err, rss_kb = r.stderr.strip().split("\n")[0], r.stderr.strip().rsplit("\n", 1)[1]
    assert int(rss_kb) < 400_000  # KiB: was > 1 GB (the file, then its text)
    assert r.returncode == 2 and err.startswith(f"error: {tmp_path}/x.czi: {why}"), r.stderr
    assert "or give a slide" in err


def test_a_big_file_given_as_the_pipeline_is_refused_without_reading_it_whole(tmp_path):
    """A slide (or any big file) given as the pipeline was read whole and decoded before 'not UTF-8 text': a 1 GB
    file took 6 s and 2.1 GB RSS. A pipeline is a few KiB: a file over 16 MiB is refused on its size."""
    with open(tmp_path / "p.json", "wb") as f:
        f.write(b"\xff" * 70000)
        f.truncate(512 << 20)
    r = subprocess.run(["/usr/bin/time", "-f", "%M", sys.executable, "-m", "slidestream.engine", "validate",
                        tmp_path / "p.json"], capture_output=True, text=True, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert int(lines[-1]) < 400_000, r.stderr  # KiB: was > 1 GB
    assert r.returncode == 2 and f"pipeline file {tmp_path}/p.json is over 16 MiB" in r.stdout + r.stderr


# ------------------------------------------------------------------- 11. a CSV cell over csv's field limit
def test_a_quote_opened_in_a_big_cohorts_header_is_one_line(small, tmp_path):
    """A cohort whose header opens a quote that never closes reads the whole file as one header cell: over 128 KiB
    (some 6,000 rows) csv raised 'field larger than field limit' outside the guarded row loop: a traceback."""
    d, pipe, good = small
    c = tmp_path / "c.csv"
    c.write_text('"slide_path,patient_id,label,age\n' + "".join(f"/d/s{i}.svs,p{i},1,50\n" for i in range(6000)))
    rc, out, err = _cli("extract", pipe, "--slides", c, "--out", tmp_path / "s.zarr")
    assert rc == 2 and err == f"error: {c}: line 1: field larger than field limit (131072); check the quotes on that line\n"


@pytest.mark.parametrize("kind", ["slide", "big cell"])
def test_evaluate_given_a_slide_or_a_huge_cell_is_one_line(small, tmp_path, kind):
    """evaluate SLIDE (a slide given as the predictions CSV: NUL bytes, no line end for a MB) and a CSV with a cell
    over 128 KiB ended in a _csv.Error traceback ('field larger than field limit'); a 1 GB file took 2.1 GB RSS."""
    d, pipe, good = small
    if kind == "slide":
        f = good
        want = f"error: {good}: a binary file (a NUL byte at byte 3), no predictions CSV"
    else:
        f = tmp_path / "p.csv"
        f.write_text("patient_id,label,age,split,image_prob\n" + "x" * 200_000 + ",1,50,test,0.5\n")
        want = f"error: {f} line 2: field larger than field limit (131072); is it the predictions CSV?"
    rc, out, err = _cli("evaluate", f, "--out", tmp_path / "ev")
    assert rc == 2 and err.startswith(want) and err.count("\n") == 1, err


# ------------------------------------------------------------------- 12. a damaged GAN manifest
@pytest.mark.parametrize("body,why", [(b"", "JSONDecodeError"), (b"[1]", "a JSON list, not an object"),
                                      (b"{}", "no generator, generator_id"), (b"\xff\xfe", "UnicodeDecodeError")])
def test_a_damaged_gan_manifest_is_one_line_in_sample_grid_and_eval(tmp_path, body, why):
    """gan sample/grid/eval read manifest.json unguarded: empty or cut (JSONDecodeError), a list (AttributeError),
    keys missing (KeyError 'generator'/'normalization'), not UTF-8 (UnicodeDecodeError): tracebacks."""
    g = tmp_path / "g"
    g.mkdir()
    (g / "manifest.json").write_bytes(body)
    for args in (("grid", g, "--out", tmp_path / "x.png"), ("eval", g, "--store", tmp_path / "s"),
                 ("sample", g, "--n", 2, "--into", tmp_path / "s")):
        rc, out, err = _cli("gan", *args)
        assert rc == 2 and err.startswith(f"error: GAN directory {g}: manifest.json is damaged ({why}") \
            and err.count("\n") == 1, (args, err)


# ------------------------------------------------------------------- 13. decimal commas
def test_a_decimal_comma_in_a_semicolon_cohort_is_named_with_its_fix(tmp_path):
    """A spreadsheet saved with ';' in a decimal-comma locale writes ages and mpp as '45,5' and '0,5': refused as
    'not a number' with no word of why; the message now names the decimal point."""
    c = tmp_path / "de.csv"
    c.write_text("slide_path;patient_id;label;age;mpp\na.svs;p1;1;45,5;0,5\nb.svs;p2;0;1,2,3;\n")
    with pytest.raises(ConfigError) as e:
        read_cohort(c)
    msg = str(e.value)
    assert "line 2: age '45,5' is not a number (write 45.5: a decimal point, not a comma)" in msg
    assert "line 2: mpp '0,5' is not a number (write 0.5: a decimal point" in msg
    assert "line 3: age '1,2,3' is not a number;" in msg + ";"  # no hint where it is no decimal comma
