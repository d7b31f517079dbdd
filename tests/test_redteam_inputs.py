"""Red team, second pass: inputs that were silently accepted with wrong numbers, or ended in a traceback."""
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from conftest import EXAMPLE, WSI, slidestream_cmd
from slidestream.engine.cohort import read_cohort
from slidestream.engine.errors import ConfigError, SlideError, StoreError
from slidestream.engine.slide import open_slide
from slidestream.engine.store import PatchStore

APERIO = "Aperio Image Library v12.0.0\r\n512x512 [0,0 512x512] (256x256) JPEG/RGB Q=85|AppMag = 20|MPP = 0.5"


def _rgb(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (512, 512, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------ slide metadata
@pytest.mark.parametrize("old, new, match", [
    ("MPP = 0.5", "MPP = 1e9", r"says 1e\+09 µm/px, not a microscope resolution"),  # was read as 1 µm/px
    ("|MPP = 0.5", "", None),  # AppMag = 20 alone: 0.5 µm/px
    ("AppMag = 20|MPP = 0.5", "AppMag = 1e9", r"objective power 1e\+09x, not a microscope objective"),  # was 1x
])
def test_aperio_values_are_read_whole_by_every_reader(tmp_path, old, new, match):
    """tifffile's reader took the digits before an exponent ("MPP = 1e9" -> 1 µm/px, "AppMag = 1e9" -> 1x);
    cuCIM and OpenSlide refused such a slide, so it fell through to tifffile and was extracted at a made-up
    resolution."""
    p = tmp_path / "s.svs"
    tifffile.imwrite(p, _rgb(), tile=(256, 256), photometric="rgb", description=APERIO.replace(old, new))
    for order in (["tifffile"], None):
        if match:
            with pytest.raises(SlideError, match=match):
                open_slide(p, order=order)
        else:
            s = open_slide(p, order=order)
            assert (s.mpp, s.mpp_source) == (0.5, "objective power")
            s.close()


@pytest.mark.parametrize("unit, size, mpp", [("mm", 0.0005, 0.5), ("nm", 500, 0.5), ("pixel", 1, None),
                                             ("reference frame", 1, None)])
def test_ome_physical_size_units(tmp_path, unit, size, mpp):
    """PhysicalSizeXUnit 'pixel' (or any unit that is no length) was taken as µm: 1 µm/px, silently."""
    p = tmp_path / "s.ome.tif"
    tifffile.imwrite(p, _rgb(), tile=(256, 256), photometric="rgb", metadata={
        "axes": "YXS", "PhysicalSizeX": size, "PhysicalSizeXUnit": unit, "PhysicalSizeY": size, "PhysicalSizeYUnit": unit})
    if mpp is None:
        with pytest.raises(SlideError, match="no resolution metadata"):
            open_slide(p)
    else:
        s = open_slide(p)
        assert s.mpp == pytest.approx(mpp) and s.mpp_source == "file mpp"
        s.close()


# ------------------------------------------------------------------------------------ pipelines
def _small_pipeline():
    doc = json.loads(EXAMPLE.read_text())
    doc["tiling"]["params"].update(size=256, min_tissue=0.3, max_tiles=6)
    doc["patches"] = {"size": 64, "mode": "random", "per_tile": 4}
    return doc


@pytest.mark.parametrize("section, key, value, match", [
    (None, "magnification", "NaN", r"\$.magnification: nan is not a number"),  # was: every slide "empty", exit 0
    ("tiling.params", "min_tissue", "NaN", r"\$.tiling.params.min_tissue: nan is not a number"),  # same
    ("thumbnail", "scale", "Infinity", r"\$.thumbnail.scale: inf"),  # was: per slide "cannot convert float NaN"
    ("thumbnail", "scale", 1e9, r"maximum of 1024"),  # was: per slide "x1 must be greater than or equal to x0"
    ("store", "level", 50, r"\$.store.level: 50 is greater than the maximum of 22"),  # was: a zstd traceback
    ("store", "codec", "jpeg", r"'jpeg' is not one of"),  # the schema offered it, the store refused it
    ("store", "chunk", 10 ** 12, r"maximum of 4096"),  # was: per slide "Unable to allocate 10.9 PiB"
    ("patches", "per_tile", 10 ** 9, r"maximum of 4096"),  # was: per slide "Unable to allocate 14.9 GiB"
    ("tiling.params", "size", 10 ** 9, r"maximum of 8192"),  # a tile of 10^18 px, read whole
    ("patches", "size", 512, r"\$.patches.size: 512 is larger than the tiles \(256 px"),  # was: exit 1, per slide
    (None, "evaluation", {"bootstrapp": 5}, r"\$: unknown key 'evaluation'; valid keys: "),  # read by nothing
])
def test_bad_pipeline_values_are_refused_before_work(tmp_path, section, key, value, match):
    doc = _small_pipeline()
    target = doc
    for part in (section.split(".") if section else []):
        target = target[part]
    target[key] = value
    p = tmp_path / "p.json"
    p.write_text(json.dumps(doc).replace('"NaN"', "NaN").replace('"Infinity"', "Infinity"))
    slides = tmp_path / "c.csv"
    slides.write_text(f"slide_path,patient_id,label,age\n{WSI / 'CMU-1-Small-Region.svs'},P1,1,50\n")
    r = subprocess.run([*slidestream_cmd(), "extract", str(p), "--slides", str(slides), "--out", str(tmp_path / "s")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and re.search(match, r.stderr), r.stderr
    assert not (tmp_path / "s").exists()


def test_chunk_of_huge_patches_is_refused():
    """4096-px patches in chunks of 128 rows: a writer holds a 6 GiB chunk in memory (was accepted)."""
    from slidestream.engine import config

    doc = _small_pipeline()
    doc["tiling"]["params"]["size"] = 4096
    doc["patches"]["size"] = 4096
    doc["store"]["chunk"] = 128
    with pytest.raises(ConfigError, match=r"\$.store.chunk: 128 patches of 4096² px make 6.0 GiB per chunk"):
        config.parse(doc)
    doc["store"]["chunk"] = 16
    config.parse(doc)


# ------------------------------------------------------------------------------------ cohort tables
@pytest.mark.parametrize("header", ["slide_path,patient_id,label,age,label", "slide_path,patient_id,label,age,Label "])
def test_cohort_with_a_column_twice_is_refused(tmp_path, header):
    """csv.DictReader keeps the last of two same-named columns: the second `label` (0) replaced the first (1)."""
    f = tmp_path / "c.csv"
    f.write_text(f"{header}\na.svs,P1,1,40,0\n")
    with pytest.raises(ConfigError, match=r"c.csv: column `label` appears more than once"):
        read_cohort(f)


def test_patient_with_a_label_or_age_on_some_lines_only_is_refused(tmp_path):
    """A patient's second slide without the label or age was stored with label -1 / age NaN beside its first
    slide's 1 / 40: one patient, two labels in the store."""
    f = tmp_path / "c.csv"
    f.write_text("slide_path,patient_id,label,age\na.svs,P1,1,40\nb.svs,P1,,\nc.svs,P2,,\nd.svs,P2,,\n")
    with pytest.raises(ConfigError) as e:
        read_cohort(f)
    assert ("lines 2, 3: patient 'P1' has label 1 on some lines and none on others" in str(e.value)
            and "lines 2, 3: patient 'P1' has age 40 on some lines and none on others" in str(e.value)
            and "P2" not in str(e.value)), e.value  # unknown on every line is fine


def test_tifffile_reader_turns_palette_cmyk_and_white_is_zero_into_rgb(tmp_path):
    """The tifffile reader (16-bit slides, OME, SubIFD pyramids) returned samples as stored: palette indices as
    gray, CMYK inks as RGB + alpha (near white: "no tissue"), white-is-zero gray inverted; cuCIM converts them."""
    rgb = _rgb()
    rgb[:256] //= 2  # not all noise: a palette of 64 colours then differs from gray
    from PIL import Image

    q = Image.fromarray(rgb).quantize(64)
    idx, pal = np.asarray(q), np.array(q.getpalette()[:192], np.uint16).reshape(64, 3)
    cmap = np.zeros((3, 256), np.uint16)
    cmap[:, :64] = pal.T * 257
    cmyk = np.dstack([255 - rgb, np.zeros(rgb.shape[:2], np.uint8)])
    cases = {"palette": (idx, dict(photometric="palette", colormap=cmap), pal[idx]),
             "cmyk16": (cmyk.astype(np.uint16) * 257, dict(photometric="separated"), rgb),
             "cmyk": (cmyk, dict(photometric="separated"), rgb),
             "miniswhite": (255 - rgb[..., 1], dict(photometric="miniswhite"), np.repeat(rgb[..., 1:2], 3, 2))}
    for name, (data, kw, want) in cases.items():
        p = tmp_path / f"{name}.tif"
        tifffile.imwrite(p, data, tile=(256, 256), **kw)
        for order in (["tifffile"], None) if name != "cmyk16" else (["tifffile"],):  # None: cuCIM, as a reference
            s = open_slide(p, order=order, mpp=0.5)
            got = s.reader.read_region((0, 0), 0, (512, 512))
            assert np.array_equal(got, want), (name, s.reader_name, np.abs(got.astype(int) - want).mean())
            s.close()
    p = tmp_path / "lab.tif"
    tifffile.imwrite(p, rgb, tile=(256, 256), photometric="cielab")
    with pytest.raises(SlideError, match=r"tifffile: photometric CIELAB .*convert the slide to RGB"):
        open_slide(p, order=["tifffile"], mpp=0.5)


@pytest.mark.parametrize("w, h, refused", [(300, 500, True), (260, 260, True), (511, 384, False), (512, 383, False)])
def test_pyramid_level_lying_about_its_size_is_refused(tmp_path, w, h, refused):
    """Level 1 of a 2048 x 1536 slide (512 x 384 px, 2 x 2 tiles) whose header claims another size with as many
    tiles: cuCIM and OpenSlide took its downsample from the claim (e.g. 4.95 instead of 4) and read patches from
    the wrong place. A size one rounding away from the truth is fine."""
    import struct

    from badinputs import good_slide

    good = good_slide(tmp_path / "g.svs")
    data = bytearray(good.read_bytes())
    with tifffile.TiffFile(good) as tf:
        tags = tf.pages[1].tags
        for name, v in (("ImageWidth", w), ("ImageLength", h)):
            data[tags[name].offset + 2:tags[name].offset + 4] = struct.pack("<H", 4)  # LONG
            data[tags[name].offset + 8:tags[name].offset + 12] = struct.pack("<I", v)
    p = tmp_path / "lie.svs"
    p.write_bytes(bytes(data))
    for order in (["cucim"], ["openslide"]):
        if refused:
            with pytest.raises(SlideError, match=rf"pyramid level 1 is {w} x {h} px, which no single downsample"):
                open_slide(p, order=order)
        else:
            open_slide(p, order=order).close()


# ------------------------------------------------------------------------------------ command-line values
def test_bad_option_values_are_one_line_not_a_traceback(cli, tmp_path):
    """--ratios a:b:c (float() traceback), nan:1:1 (KeyError traceback), a negative --seed (numpy traceback) and
    an unusable --scheduler address (dask traceback) end in one line, exit 2; the store is untouched."""
    from test_redteam_cli import _store

    st = _store(tmp_path / "st")
    before = st.table(["split"])["split"].tolist()
    pipe = tmp_path / "p.json"
    pipe.write_text(json.dumps(_small_pipeline()))
    for args, match in ((("--ratios", "a:b:c"), r"--ratios a:b:c: give train:val:test as numbers"),
                        (("--ratios", "nan:1:1"), r"split ratios must be three non-negative numbers .*nan"),
                        (("--ratios", "1:inf:1"), r"split ratios must be three non-negative numbers .*inf"),
                        (("--seed", "-1"), r"--seed")):
        code, _, err = cli("split", pipe, "--store", st.path, *args)
        assert code == 2 and "Traceback" not in err and re.search(match, err), (args, err)
    assert PatchStore.open(st.path).table(["split"])["split"].tolist() == before
    preds = tmp_path / "p.csv"
    preds.write_text("patient_id,label,age,split,image_prob\nA,1,41,val,0.9\nB,0,60,val,0.2\nC,1,45,test,0.7\n"
                     "D,0,70,test,0.4\n")
    code, _, err = cli("evaluate", preds, "--out", tmp_path / "ev", "--seed", "-1")
    assert code == 2 and "--seed" in err, err
    code, _, err = cli("evaluate", preds, "--out", tmp_path / "ev", "--bootstrap", "100000000")  # 10^8 x n indices
    assert code == 2 and "--bootstrap" in err, err
    code, _, err = cli("gan", "grid", tmp_path, "--out", tmp_path / "g.png", "--n", "100000")  # a 26-gigapixel sheet
    assert code == 2 and "--n" in err, err
    slides = tmp_path / "c.csv"
    slides.write_text(f"slide_path,patient_id,label,age\n{WSI / 'CMU-1-Small-Region.svs'},P1,1,50\n")
    code, _, err = cli("extract", pipe, "--slides", slides, "--out", tmp_path / "s", "--scheduler", "garbage", "--quiet")
    assert code == 2 and "--scheduler garbage: cannot connect (missing port number" in err, err


# ------------------------------------------------------------------------------------ DICOM
def _dicom(tmp_path, name, change):
    import pydicom

    ds = pydicom.dcmread(WSI / "pathml_small_dicom_TCGA-XK-AAJU_pen.dcm")
    change(ds)
    d = tmp_path / name
    d.mkdir()
    ds.save_as(d / f"{name}.dcm", enforce_file_format=False)
    return d / f"{name}.dcm"


def test_dicom_matrix_smaller_than_its_frames_is_refused(tmp_path):
    """A TotalPixelMatrix of one 500 x 500 frame in a file of 42 frames was opened as a 500 x 500 slide (its
    first frame), silently."""
    def one_frame(ds):
        ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = ds.Columns, ds.Rows

    with pytest.raises(SlideError, match=r"42 frames, but a 500 x 500 px matrix of 500 x 500 frames holds 1"):
        open_slide(_dicom(tmp_path, "one", one_frame), mpp=0.5)


def test_dicom_non_square_pixel_spacing_is_no_resolution(tmp_path):
    """PixelSpacing (0.25, 0.5) µm: the column spacing alone was taken, so patches were stretched 2:1."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    def spacing(v):
        def change(ds):
            pm, g = Dataset(), Dataset()
            pm.PixelSpacing = v
            g.PixelMeasuresSequence = Sequence([pm])
            ds.SharedFunctionalGroupsSequence = Sequence([g])
            del ds.ImagedVolumeWidth, ds.ImagedVolumeHeight
        return change

    with pytest.raises(SlideError, match="pixels are 0.5 µm wide and 0.25 µm high, not square"):
        open_slide(_dicom(tmp_path, "aniso", spacing([0.00025, 0.0005])))
    s = open_slide(_dicom(tmp_path, "square", spacing([0.0005, 0.0005])))
    assert (s.mpp, s.mpp_source) == (pytest.approx(0.5), "file mpp")
    s.close()


# ------------------------------------------------------------------------------------ stores
@pytest.mark.parametrize("damage", ["flip", "cut"])
@pytest.mark.parametrize("target, read, match", [
    ("patches", lambda st: st.read(0, len(st)), r"cannot read the patches of slides 'S0' \(rows 0\.\.3\)"),
    ("x", lambda st: st.column("x"), r"cannot read its column 'x'"),
    ("records", lambda st: st, r"cannot open the store"),
])
def test_damaged_chunk_files_are_one_line_not_a_codec_traceback(tmp_path, damage, target, read, match):
    """Flipped or cut bytes in a chunk file ended in zstd's RuntimeError ("Data corruption detected") or a
    checksum ValueError, a traceback in every command that read it (features, export, train, extract's resume)."""
    from test_redteam_cli import _store

    st = _store(tmp_path / "st")
    st.close()
    f = min(p for p in (st.path / target / "c").rglob("*") if p.is_file())
    data = bytearray(f.read_bytes())
    if damage == "flip":  # the first chunk's zstd frame header (any flip: tests/test_store.py)
        for i in range(8):
            data[i] ^= 0x5A
    f.write_bytes(bytes(data) if damage == "flip" else bytes(data[: len(data) // 2]))
    with pytest.raises(StoreError, match=f"{st.path}: .*{match}|{match} {st.path}"):
        read(PatchStore.open(st.path))
    assert not (tmp_path / "st.lock").exists()
    if target == "records":  # extract's resume opens it for writing: refused, the lock given back
        with pytest.raises(StoreError, match="cannot open the store"):
            PatchStore.open(st.path, mode="r+")
        assert not (tmp_path / "st.lock").exists()


@pytest.mark.parametrize("target", ["features", "meta/label"])
def test_damaged_feature_chunk_is_one_line(tmp_path, target):
    """The same for a feature store: `mil train` and `export --features` ended in zstd's traceback."""
    from slidestream.engine import config, features
    from test_mil import PIPE
    from test_redteam_cli import _store

    st = _store(tmp_path / "st")
    st.close()
    pipe = config.parse({**PIPE, "encoder": {"name": "morphometry"}})
    features.extract_features(pipe, st.path, tmp_path / "f", progress=False, log=None)
    f = min(p for p in (tmp_path / "f" / target / "c").rglob("*") if p.is_file())
    f.write_bytes(bytes(b ^ 0x5A for b in f.read_bytes()[:8]) + f.read_bytes()[8:])
    fs = features.FeatureStore(tmp_path / "f")
    with pytest.raises(StoreError, match=r"feature store .*: cannot read (the features of rows 0\.\.32|its column 'label')"):
        fs.rows() if target == "features" else fs.column("label")
    (tmp_path / "p.json").write_text(json.dumps({**PIPE, "encoder": {"name": "morphometry"}}))
    # labels and ages come from the patch store while it is there (--store, or the one the feature store
    # records): the feature store's own label column is read once the patch store is gone
    store_arg = ["--store", str(st.path)]
    if target == "meta/label":
        import shutil

        shutil.move(str(st.path), str(tmp_path / "moved"))
        store_arg = ["--folds", "3"]
    r = subprocess.run([*slidestream_cmd(), "mil", "train", str(tmp_path / "p.json"), "--features", str(tmp_path / "f"),
                        *store_arg, "--out", str(tmp_path / "m")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "the store is damaged" in r.stderr, r.stderr


@pytest.mark.parametrize("edit, match", [
    (lambda m, a: m["patches"].update(shape=[8, 32, 32, 3]), r"its records place patches up to row \d+, but the arrays hold 8"),
    (lambda m, a: m["x"].update(shape=[8]), r"column 'x' has fewer rows than the patches"),
    (lambda m, a: m["patches"].update(data_type="float32"), r"patches are float32"),
    (lambda m, a: a.update(pipeline="x"), r"its `slidestream` attributes are not those of a patch store"),
])
def test_hand_edited_store_metadata_is_one_line(tmp_path, edit, match):
    """zarr.json edited by hand (or damaged): fewer rows than the records place patches in ended in an IndexError
    traceback in export/features/train; a pipeline that is not an object in an AttributeError."""
    from test_redteam_cli import _store

    st = _store(tmp_path / "st")
    st.close()
    doc = json.loads((st.path / "zarr.json").read_text())
    edit(doc["consolidated_metadata"]["metadata"], doc["attributes"]["slidestream"])
    (st.path / "zarr.json").write_text(json.dumps(doc))
    with pytest.raises(StoreError, match=f"store {st.path}: {match}.*zarr.json was edited"):
        PatchStore.open(st.path).table(["x"])
    try:  # a writer reads each array's own zarr.json (and rewrites the consolidated one): refused or fine
        PatchStore.open(st.path, mode="r+").close()
    except StoreError as e:
        assert "zarr.json was edited" in str(e)
    assert not (tmp_path / "st.lock").exists()


def test_same_slide_under_another_path_is_refused(tmp_path):
    """A symbolic link to a listed slide, or a DICOM slide's folder beside one of its .dcm files, was the same
    slide extracted twice (two patients' worth of the same tissue, possibly in train and test)."""
    from badinputs import good_slide

    good = good_slide(tmp_path / "g.svs")
    (tmp_path / "link.svs").symlink_to(good)
    dcm = WSI / "dicom-cmu-1-small-region"
    one = next(dcm.glob("*.dcm"))
    for rows, dup in (((good, tmp_path / "link.svs"), "link.svs"), ((one, dcm), dcm.name), ((dcm, one), one.name)):
        f = tmp_path / "c.csv"
        f.write_text("slide_path,patient_id,label,age,slide_id\n" + "".join(f"{p},P{i},1,40,s{i}\n" for i, p in enumerate(rows)))
        with pytest.raises(ConfigError, match=f"line 3: slide '.*{dup}' is already on line 2"):
            read_cohort(f)
    f.write_text(f"slide_path,patient_id,label,age\n{one},P0,1,40\n{WSI / 'pathml_small_dicom_TCGA-XK-AAJU_pen.dcm'},P1,1,40\n")
    assert len(read_cohort(f)) == 2  # two DICOM files of different folders


def test_pipe_in_a_dicom_folder_does_not_hang(tmp_path):
    """A named pipe among a DICOM slide's files: the readers open every .dcm of the folder (OpenSlide its first,
    the dicom reader the other levels), and opening a pipe waits for a writer forever."""
    import os
    import shutil

    folder = tmp_path / "dicom"
    shutil.copytree(WSI / "dicom-cmu-1-small-region", folder)
    os.mkfifo(folder / "a.dcm")
    code = ("from slidestream.engine.slide import open_slide\n"
            f"for p in ({str(folder)!r}, {str(next(folder.glob('level-0*.dcm')))!r}):\n"
            "    try:\n        open_slide(p)\n    except Exception as e:\n        print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.count("the DICOM folder holds a.dcm, which is not a regular file") == 2, r.stdout + r.stderr


# ------------------------------------------------------------------------------------ predictions
def test_evaluate_with_a_bundle_refuses_a_table_missing_val_patients(tmp_path):
    """A predictions CSV with a val row cut out, evaluated with the bundle that chose its epoch on val: the
    selection-set metrics were computed on other patients than the bundle's, silently (exit 0)."""
    from slidestream.engine import evaluate

    rows = ["A,1,41,train,0.9", "B,0,60,train,0.2", "C,1,45,val,0.7", "D,0,70,val,0.4", "G,0,52,val,0.3",
            "E,1,50,test,0.8", "F,0,66,test,0.3"]
    trained = {s: {"n": len(ids), "patients": ids, "ids_digest": evaluate.ids_digest(ids)}
               for s, ids in (("train", ["A", "B"]), ("val", ["C", "D", "G"]))}
    f = tmp_path / "p.csv"
    for kept, ok in ((rows, True), ([r for r in rows if not r.startswith("G,")], False),
                     ([r for r in rows if ",val," not in r], True)):  # no val rows at all: an external test table
        f.write_text("\n".join(["patient_id,label,age,split,image_prob", *kept]) + "\n")
        t = evaluate.load_predictions(f)
        if ok:
            evaluate.evaluate(t, bootstrap=0, trained=trained)
        else:
            with pytest.raises(ConfigError, match=r"not \d+ of the bundle's val split \(first: 'G'\)"):
                evaluate.evaluate(t, bootstrap=0, trained=trained)


def test_store_inside_the_slide_folder_is_not_a_slide_on_the_rerun(tmp_path):
    """`extract --slides DIR --out DIR/store.zarr`: the rerun found the QA pictures (DIR/store.zarr.qa/*.png)
    as slides and refused the cohort (same slide id), so the run could not be resumed; with other names they
    would have been extracted as slides."""
    from badinputs import good_slide

    good_slide(tmp_path / "a.svs")
    (tmp_path / "store.zarr.qa").mkdir()
    (tmp_path / "store.zarr").mkdir()
    (tmp_path / "store.zarr" / "zarr.json").write_text("{}")
    from PIL import Image

    Image.fromarray(_rgb()).save(tmp_path / "store.zarr.qa" / "a.png")
    Image.fromarray(_rgb()).save(tmp_path / "store.zarr.qa" / "b.png")
    (tmp_path / "feats.zarr").mkdir()
    (tmp_path / "feats.zarr" / "zarr.json").write_text("{}")
    Image.fromarray(_rgb()).save(tmp_path / "feats.zarr" / "c.png")
    assert [r.slide_id for r in read_cohort(tmp_path)] == ["a"]


def test_deflate_tiles_with_a_predictor_do_not_crash_the_process(tmp_path):
    """cuCIM ends the process with SIGSEGV on a Deflate-compressed tiled TIFF with a horizontal predictor (a common
    `tiffcp -c zip:2` output): `extract` died mid-cohort (exit -11) and every rerun died on the same slide."""
    p = tmp_path / "zip.svs"
    tifffile.imwrite(p, _rgb(), tile=(256, 256), photometric="rgb", compression="zlib", predictor=True,
                     description=APERIO)
    code = ("import numpy as np\nfrom slidestream.engine.slide import open_slide\n"
            f"s = open_slide({str(p)!r})\nprint(s.reader_name, int(s.reader.read_region((0, 0), 0, (512, 512)).sum()))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (r.returncode, r.stderr[-500:])
    assert r.stdout.split()[1] == str(int(_rgb().astype(np.int64).sum())) and r.stdout.split()[0] != "cucim", r.stdout


@pytest.mark.parametrize("kw", [dict(compression="zstd"), dict(compression="webp", compressionargs={"lossless": True}),
                                dict(compression="zlib", planarconfig="separate")])
def test_tiffs_cucim_cannot_decode_go_to_another_reader(tmp_path, kw):
    """cuCIM opened Zstd, WebP and planar Deflate TIFFs, then failed every read ("This format ... is not supported
    yet"): the slide failed although tifffile reads it."""
    data = np.moveaxis(_rgb(), -1, 0) if kw.get("planarconfig") else _rgb()
    p = tmp_path / "s.svs"
    tifffile.imwrite(p, data, tile=(256, 256), photometric="rgb", description=APERIO, **kw)
    s = open_slide(p)
    assert s.reader_name == "tifffile" and np.array_equal(s.reader.read_region((0, 0), 0, (512, 512)), _rgb())
    s.close()


def test_one_bit_tiff_is_refused_not_read_as_black(tmp_path):
    p = tmp_path / "s.tif"
    tifffile.imwrite(p, _rgb()[..., 0] > 128, tile=(256, 256), photometric="minisblack")
    with pytest.raises(SlideError, match="tifffile: 1-bit samples: not a scanned colour image"):
        open_slide(p, order=["tifffile"], mpp=0.5)


@pytest.mark.parametrize("target", ["self", "first"])
def test_circular_tiff_directory_chain_does_not_hang(tmp_path, target):
    """A TIFF whose last directory points back (to itself or to the first): iterating tifffile's pages after
    indexing one never ended (the cuCIM reader's codec check hung the process). Since round 3 such a file is
    refused as broken, at once (test_redteam_read3.py), instead of being read."""
    import struct

    from badinputs import good_slide

    good = good_slide(tmp_path / "g.svs")
    data = bytearray(good.read_bytes())
    with tifffile.TiffFile(good) as tf:
        offs = [p.offset for p in tf.pages]
    last = offs[-1] if target == "first" else offs[0]
    struct.pack_into("<I", data, last + 2 + 12 * struct.unpack_from("<H", data, last)[0], offs[0])
    p = tmp_path / "loop.svs"
    p.write_bytes(bytes(data))
    code = ("from slidestream.engine.slide import open_slide\n"
            f"s = open_slide({str(p)!r})\nprint(s.reader_name, s.thumbnail(16).shape)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "its directories form a loop" in r.stderr, (r.stdout, r.stderr[-300:])


def test_any_flipped_byte_in_a_feature_chunk_is_an_error_never_other_features(tmp_path):
    """Feature-store chunks carry zstd's content checksum: flipping any one byte of the features chunk is a
    StoreError, never other features (without the checksum some flips decode to other values silently)."""
    from slidestream.engine import config, features
    from test_mil import PIPE
    from test_redteam_cli import _store

    st = _store(tmp_path / "st", n=2, per=4)
    st.close()
    features.extract_features(config.parse({**PIPE, "encoder": {"name": "morphometry"}}), st.path, tmp_path / "f",
                              progress=False, log=None)
    good_rows = features.FeatureStore(tmp_path / "f").rows()
    f = next(p for p in (tmp_path / "f" / "features" / "c").rglob("*") if p.is_file())
    good = f.read_bytes()
    wrong = []
    for i in range(0, len(good), max(1, len(good) // 400)):
        bad = bytearray(good)
        bad[i] ^= 0x10
        f.write_bytes(bytes(bad))
        try:
            rows = features.FeatureStore(tmp_path / "f").rows()
        except StoreError:
            continue
        if not np.array_equal(np.asarray(rows), np.asarray(good_rows), equal_nan=True):
            wrong.append(i)
    f.write_bytes(good)
    assert not wrong, f"{len(wrong)} flipped bytes of {len(good)} read as other features"


def test_byte_identical_slide_copies_are_found_and_recorded(tmp_path):
    """The same slide file under two names: found by content (size, first/last 64 KiB, then every byte), warned
    about by extract, and each slide's record keeps its fingerprint for `split`; a file of the same size
    differing in one middle byte is not a copy."""
    import shutil

    from slidestream.engine.cohort import identical_copies

    src = WSI / "tcga-cr-7395-01a-01-ts1.svs"  # 3.9 MB: its middle byte is in neither the first nor the last 64 KiB
    folder = tmp_path / "slides"
    folder.mkdir()
    shutil.copy(src, folder / "a.svs")
    shutil.copy(src, folder / "b.svs")
    table = tmp_path / "cohort.csv"
    table.write_text(f"slide_path,patient_id,label,age\n{folder / 'a.svs'},P1,1,50\n{folder / 'b.svs'},P2,0,60\n")
    pairs = identical_copies(read_cohort(table))
    assert [(a.slide_id, b.slide_id) for a, b in pairs] == [("a", "b")]
    r = subprocess.run([*slidestream_cmd(), "extract", str(EXAMPLE), "--slides", str(table), "--out",
                        str(tmp_path / "st"), "--quiet", "--mpp", "0.5"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    warn = [ln for ln in r.stderr.splitlines() if ln.startswith("warning ")]
    assert len(warn) == 1 and "b.svs: a byte-identical copy of" in warn[0] and "'P1', 'P2'" in warn[0]
    from slidestream.engine.store import PatchStore

    recs = PatchStore.open(tmp_path / "st").records("slides")
    assert recs["a"]["fingerprint"] == recs["b"]["fingerprint"] is not None
    data = bytearray(src.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, same first and last 64 KiB: only the full comparison tells them apart
    (folder / "b.svs").write_bytes(bytes(data))
    assert identical_copies(read_cohort(table)) == []


def test_signed_8bit_tiff_is_refused_not_read_as_raw_bytes(tmp_path):
    """A tiled TIFF of signed 8-bit samples: OpenSlide returned their bytes as unsigned colours (-100 as 156)
    once the user gave an mpp; now every reader refuses it and the error says what to do."""
    rng = np.random.default_rng(0)
    a = rng.integers(-100, 100, (1024, 1024, 3)).astype(np.int8)
    p = tmp_path / "signed.tif"
    tifffile.imwrite(p, a, tile=(256, 256), photometric="rgb")
    with pytest.raises(SlideError, match=r"signed samples.*convert the slide to 8-bit RGB"):
        from slidestream.engine.slide import open_slide

        open_slide(p, mpp=0.5)
