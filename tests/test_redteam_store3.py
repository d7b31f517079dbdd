"""Red team, store/config/plugin loading (round 3): each test failed before its fix."""
import json

import numpy as np
import pytest

from conftest import EXAMPLE
from slidestream.engine import config
from slidestream.engine.errors import ConfigError, StoreError


def _write(tmp_path, text, name="p.json"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


# ------------------------------------------------------------------------------------ pipeline files
def test_duplicate_key_is_refused_naming_it(tmp_path):
    """json.loads keeps the last of two equal keys: a pipeline saying magnification 10 and then 40 ran at 40."""
    p = _write(tmp_path, '{"name": "a", "magnification": 10, "tiling": {"name": "grid"}, "magnification": 40}')
    with pytest.raises(ConfigError, match=r"p.json.*key 'magnification' twice"):
        config.load(p)


@pytest.mark.parametrize("text, path", [('"seed": 1e3', r"\$.seed: 1000.0"), ('"store": {"chunk": 8.0}', r"\$.store.chunk: 8.0")])
def test_float_in_an_integer_field_is_refused(tmp_path, text, path):
    """jsonschema's "integer" takes 8.0 and 1e3 (floats with no fraction): they went on as floats."""
    p = _write(tmp_path, '{"name": "a", %s}' % text)
    with pytest.raises(ConfigError, match=path + " is not of type 'integer'"):
        config.load(p)


def test_float_in_an_integer_field_from_python_is_refused():
    doc = json.loads(EXAMPLE.read_text())
    doc["patches"]["per_tile"] = 8.0
    with pytest.raises(ConfigError, match=r"\$.patches.per_tile: 8.0 is not of type 'integer'"):
        config.parse(doc)
    doc["patches"]["per_tile"] = 8
    config.parse(doc)


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.update(magnificaton=10), r"^\$: unknown key 'magnificaton'; did you mean 'magnification'\?"),
    (lambda d: d["patches"].update(per_tiles=4), r"^\$.patches: unknown key 'per_tiles'; did you mean 'per_tile'\?"),
    (lambda d: d["tiling"].update(name="gird"), r"^\$.tiling.name: unknown plugin 'gird'; did you mean 'grid'\?"),
    (lambda d: d.update(zzz=1), r"^\$: unknown key 'zzz'; valid keys: \$schema, aggregator, "),
])
def test_typo_gets_the_nearest_valid_name(edit, match):
    doc = json.loads(EXAMPLE.read_text())
    edit(doc)
    errs = config.validation_errors(doc)
    assert len(errs) == 1 and __import__("re").search(match, errs[0]), errs


def test_unknown_plugin_from_python_gets_the_nearest_name():
    from slidestream.engine import registry

    with pytest.raises(ConfigError, match=r"unknown filter plugin 'dpw.gray'; did you mean 'dpw.grays'\?"):
        registry.get("filter", "dpw.gray")


@pytest.mark.parametrize("text, match", [
    ('{"name": "a",\n // the paper\n "seed": 0}', r"p.json: JSON has no comments \(// at line 2\); remove them"),
    ('{"name": "a", /* x */ "seed": 0}', r"JSON has no comments \(/\* at line 1\)"),
    ('{"name": "a",\n "seed": 0,\n}', r"p.json: trailing comma at line 2 \(before '}'\); remove it"),
    ('{"filters": [{"name": "otsu"},\n ]}', r"trailing comma at line 1 \(before '\]'\)"),
])
def test_comments_and_trailing_commas_are_named(tmp_path, text, match):
    """Was: 'Expecting property name enclosed in double quotes at line 3 column 1'."""
    with pytest.raises(ConfigError, match=match):
        config.load(_write(tmp_path, text))


def test_byte_order_mark_is_accepted(tmp_path):
    """A Windows editor's UTF-8 BOM: was 'Unexpected UTF-8 BOM'."""
    p = tmp_path / "p.json"
    p.write_bytes(b"\xef\xbb\xbf" + EXAMPLE.read_bytes())
    assert config.load(p)["magnification"] == 10



@pytest.mark.parametrize("depth, match", [(3000, "hundreds of levels deep"), (900, r"\$: nested 901 levels deep")])
def test_deeply_nested_pipeline_is_one_line(tmp_path, depth, match):
    """[[[[...]]]] a few hundred levels deep ended in a RecursionError traceback (json's decoder, then jsonschema)."""
    p = _write(tmp_path, '{"name": "a", "filters": %s%s}' % ("[" * depth, "]" * depth))
    with pytest.raises(ConfigError, match=match):
        config.load(p)


def test_json_error_says_at_once():
    e = json.JSONDecodeError("Invalid control character at", '{"a": "x\x00"}', 8)
    assert config._json_slip('{"a": "x\x00"}', e) == "not valid JSON: Invalid control character at line 1 column 9"


# ------------------------------------------------------------------------------------ plugin loading
def _broken_site(tmp_path):
    """An installed package (dist-info + module) whose slidestream.plugins entry point raises on import."""
    site = tmp_path / "site"
    (site / "badlab-1.0.dist-info").mkdir(parents=True)
    (site / "badlab-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: badlab\nVersion: 1.0\n")
    (site / "badlab-1.0.dist-info" / "entry_points.txt").write_text("[slidestream.plugins]\nbadlab = badlab_filters\n")
    (site / "badlab_filters.py").write_text("import numpy\nraise ImportError('needs numpy 9')\n")
    return site


def test_plugin_package_whose_hook_raises_is_skipped_with_a_warning(tmp_path):
    """A package that imports but whose hook raises when asked for its plugins: every command's traceback."""
    site = _broken_site(tmp_path)
    (site / "badlab_filters.py").write_text("from slidestream.engine.hookspecs import hookimpl\n\n\n@hookimpl\n"
                                            "def slidestream_filters():\n    raise RuntimeError('no licence file')\n")
    r = _run(site, "validate", EXAMPLE)
    warn = [ln for ln in r.stderr.splitlines() if "badlab" in ln]
    assert r.returncode == 0 and len(warn) == 1 and "no licence file" in warn[0], r.stderr


def _run(site, *args):
    import os
    import subprocess

    from conftest import slidestream_cmd

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([*slidestream_cmd(), *map(str, args)], capture_output=True, text=True, env=env, timeout=60)


def test_broken_plugin_package_is_skipped_with_a_warning(tmp_path):
    """A third-party package whose plugin module raised on import killed every command (validate, plugins, extract)
    with its traceback; now it is skipped with one warning line, and refused only where a pipeline names it."""
    site = _broken_site(tmp_path)
    r = _run(site, "validate", EXAMPLE)
    assert r.returncode == 0, r.stderr
    warn = [ln for ln in r.stderr.splitlines() if "badlab" in ln]
    assert len(warn) == 1 and "plugin package 'badlab'" in warn[0] and "needs numpy 9" in warn[0], r.stderr
    doc = json.loads(EXAMPLE.read_text())
    doc["filters"].append({"name": "badlab.dark"})
    p = _write(tmp_path, json.dumps(doc))
    r = _run(site, "validate", p)
    err = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and "unknown plugin 'badlab.dark'" in err and "plugin package 'badlab'" in err and "failed to load" in err, r.stderr


# ------------------------------------------------------------------------------------ patch store
def _small(path, n=2, per=4, prefix="S"):
    from test_redteam_cli import _store

    st = _store(path, prefix=prefix, n=n, per=per)
    st.close()
    return st


def _shard(st, key):
    from slidestream.engine.store import PatchStore

    p0 = PatchStore.open(st.path).records()[key]["region"][0]
    return PatchStore.open(st.path)._shard_file(p0 // st.shard)


def test_swapped_shard_files_of_two_slides_are_refused_and_re_extracted(tmp_path):
    """Two slides' shard files swapped (or one replaced by another slide's copy) read as the other slide's
    patches, silently: each commit now records its shard files' size and CRC32, checked on reading."""
    from slidestream.engine.store import PatchStore

    st = _small(tmp_path / "st")
    a, b = _shard(st, "S0"), _shard(st, "S1")
    want = PatchStore.open(st.path).read(0, 4)
    assert PatchStore.open(st.path).records()["S0"]["shards"][a.relative_to(st.path).as_posix()][0] == a.stat().st_size
    tmp = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(tmp)
    with pytest.raises(StoreError, match=r"store .*st: the patch shard patches/c/0/0/0/0 of slides 'S0' is not the one "
                                         r"its commit wrote .*swapped or replaced; re-extract that slide"):
        PatchStore.open(st.path).read(0, 4)
    with pytest.raises(StoreError, match="slides 'S1'"):
        PatchStore.open(st.path).read(4, 8)
    assert a.stat().st_size == b.stat().st_size  # random patches: equal shard sizes, so a size check misses the swap
    assert set(PatchStore.open(st.path).changed_shards()) == {"S0", "S1"}  # a resume re-extracts both
    b.write_bytes(a.read_bytes())
    a.write_bytes(tmp)
    assert np.array_equal(PatchStore.open(st.path).read(0, 4), want)
    w = PatchStore.open(st.path, mode="r+")
    assert w.changed_shards() == {}
    b.write_bytes(a.read_bytes() + b"x")  # a shard file of another size: a resume re-extracts that slide
    assert list(w.changed_shards()) == ["S1"]
    w.close()


def test_extract_resume_re_extracts_a_slide_whose_shard_file_changed(tmp_path):
    import shutil

    from conftest import WSI
    from slidestream.engine import runner
    from slidestream.engine.cohort import read_cohort
    from slidestream.engine.store import PatchStore
    from test_redteam_inputs import _small_pipeline

    for name in ("a", "b"):
        shutil.copy(WSI / "CMU-1-Small-Region.svs", tmp_path / f"{name}.svs")
    (tmp_path / "c.csv").write_text("slide_path,patient_id,label,age\na.svs,P1,1,50\nb.svs,P2,0,60\n")
    pipe = config.parse(_small_pipeline())
    runner.extract(pipe, read_cohort(tmp_path / "c.csv"), tmp_path / "st", progress=False, qa=False)
    st = PatchStore.open(tmp_path / "st")
    want, key = st.read(0, len(st)), next(k for k in st.records() if k.startswith("b"))
    shard = _shard(st, key)
    shard.write_bytes(shard.read_bytes()[:-100])
    s = runner.extract(pipe, read_cohort(tmp_path / "c.csv"), tmp_path / "st", progress=False, qa=False)
    redone = [x for x in s["slides"] if x.get("reason", "").startswith("its shard file")]
    assert [x["slide_id"] for x in redone] == [key], s["slides"]
    st = PatchStore.open(tmp_path / "st")
    assert np.array_equal(st.read(0, len(st)), want)


# ------------------------------------------------------------------------------------ feature store
def _pipe():
    from test_mil import PIPE

    return config.parse({**PIPE, "encoder": {"name": "morphometry"}})


def test_features_takes_the_store_lock(tmp_path):
    """Two `slidestream features` on one --out both wrote it (the patch store's writers take STORE.lock)."""
    import socket
    import subprocess

    from slidestream.engine import features

    st = _small(tmp_path / "st")
    other = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / "f.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": other.pid}))
        with pytest.raises(StoreError, match=rf"store {tmp_path / 'f'} is being written by pid {other.pid}"):
            features.extract_features(_pipe(), st.path, tmp_path / "f", progress=False, log=None)
    finally:
        other.kill()
        other.wait()
    features.extract_features(_pipe(), st.path, tmp_path / "f", progress=False, log=None)  # a dead holder: taken over
    assert not (tmp_path / "f.lock").exists()


def test_interrupted_first_features_run_leaves_no_store_at_out(tmp_path, monkeypatch):
    """A first `features` run killed mid-way left a half-written store at --out (unwritten rows read as zeros by
    anything that did not check `done`); now it is built in OUT.partial, resumed from there, renamed when done."""
    from slidestream.engine import features

    st = _small(tmp_path / "st", n=3)
    features.extract_features(_pipe(), st.path, tmp_path / "ref", progress=False, log=None)
    calls, close = [], features.EncoderSink.close

    def dies_on_the_second_slide(self):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return close(self)

    monkeypatch.setattr(features.EncoderSink, "close", dies_on_the_second_slide)
    with pytest.raises(KeyboardInterrupt):
        features.extract_features(_pipe(), st.path, tmp_path / "f", progress=False, log=None)
    monkeypatch.undo()
    assert not (tmp_path / "f").exists() and (tmp_path / "f.partial" / "zarr.json").is_file()
    with pytest.raises(StoreError):
        features.FeatureStore(tmp_path / "f")
    s = features.extract_features(_pipe(), st.path, tmp_path / "f", progress=False, log=None)
    assert s["skipped"] == 1 and not (tmp_path / "f.partial").exists() and not (tmp_path / "f.lock").exists()
    fs = features.FeatureStore(tmp_path / "f")
    assert fs.complete() and np.array_equal(fs.rows(), features.FeatureStore(tmp_path / "ref").rows())


def test_features_resume_from_another_patch_store_is_refused(tmp_path):
    """Same pipeline, same row count, another patch store: the resume encoded the other store's patches over
    the first one's rows, under the first one's slide ids. A moved or copied store still resumes."""
    import shutil

    from slidestream.engine import features
    from slidestream.engine.store import PatchStore, RowWriter

    a, b = _small(tmp_path / "a"), _small(tmp_path / "b")
    w = PatchStore.open(b.path, mode="r+")  # b: the same slide names and rows as a, other pixels in S1
    rw = RowWriter(w.stage_dir() / "s1", 4, w.size, w.store_cfg())
    rw.write(0, np.zeros((4, 32, 32, 3), np.uint8))
    w.commit_staged("S1", rw.close(), 4, {"slide_id": "S1"}, {"status": "done"}, replace=True)
    w.close()
    assert [len(PatchStore.open(x).records()) for x in (a.path, b.path)] == [2, 2] and len(PatchStore.open(b.path)) == 8
    features.extract_features(_pipe(), a.path, tmp_path / "f", progress=False, log=None)
    with pytest.raises(StoreError, match=rf"feature store {tmp_path / 'f'} was made from the patch store {tmp_path / 'a'}, "
                                         rf"not {tmp_path / 'b'}"):
        features.extract_features(_pipe(), b.path, tmp_path / "f", progress=False, log=None)
    shutil.copytree(a.path, tmp_path / "a2")
    assert features.extract_features(_pipe(), tmp_path / "a2", tmp_path / "f", progress=False, log=None)["skipped"] == 2


def test_feature_store_given_as_patch_store_is_named(tmp_path):
    """`train --store FEATS` said 'cannot open the store (FileNotFoundError: .../patches/zarr.json); re-extract it';
    now it names a feature store, which store it came from, and which option takes it. And the other way round."""
    import subprocess

    from conftest import slidestream_cmd
    from slidestream.engine import features
    from slidestream.engine.store import PatchStore

    st = _small(tmp_path / "st")
    features.extract_features(_pipe(), st.path, tmp_path / "f", progress=False, log=None)
    with pytest.raises(StoreError, match=rf"{tmp_path / 'f'} is a feature store \(from `slidestream features`\), not a "
                                         rf"patch store: --store wants .*its patch store is {st.path}.*--features"):
        PatchStore.open(tmp_path / "f")
    with pytest.raises(StoreError, match=rf"{st.path} is a patch store \(from `slidestream extract`\), not a feature "
                                         r"store: --features wants one from `slidestream features"):
        features.FeatureStore(st.path)
    p = _write(tmp_path, json.dumps({"name": "t", "classifier": {"name": "small_cnn"}}))
    r = subprocess.run([*slidestream_cmd(), "train", str(p), "--store", str(tmp_path / "f"), "--out", str(tmp_path / "m")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "is a feature store" in r.stderr, r.stderr


def _edit_record(st, i, text):
    """Overwrite record ``i`` of a closed store with ``text`` (as damage or a bad merge would)."""
    from slidestream.engine.store import PatchStore

    w = PatchStore.open(st.path)
    w._cols["records"].write(st.path / "records", i, [text])


@pytest.mark.parametrize("edit, match", [
    (lambda log: json.dumps(log[1])[:40], r"record 1 is not a JSON object \(cut short\?"),
    (lambda log: json.dumps([1, 2]), r"record 1 is not a JSON object"),
    (lambda log: json.dumps({"status": "done", "region": [64, 4]}), r"record 1 has no section or key"),
    (lambda log: json.dumps({**log[0], "key": "S0copy"}), r"slides 'S0copy' and slides 'S0' both claim rows 0\.\.3"),
    (lambda log: json.dumps({**log[1], "region": [60, 4]}), r"slides 'S1' starts at row 60, not at a shard boundary"),
    (lambda log: json.dumps({**log[1], "region": [64, "4"]}), r"slides 'S1' has the region \[64, '4'\]"),
])
def test_broken_or_duplicated_records_are_refused_on_open(tmp_path, edit, match):
    """A record cut short or of another shape ended in 'cannot open the store (KeyError: 'section')'-style lines or a
    TypeError deep in a reader; a second record claiming a slide's rows (a copied record) read those patches twice,
    under two slide ids, silently."""
    from slidestream.engine.store import PatchStore

    st = _small(tmp_path / "st")
    _edit_record(st, 1, edit(PatchStore.open(st.path)._log))
    for mode in ("r", "r+"):
        with pytest.raises(StoreError, match=rf"store {st.path}: {match}.*re-extract"):
            PatchStore.open(st.path, mode)
    assert not (tmp_path / "st.lock").exists()


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.update(S0copy=d["S0"]) or d.pop("S1"), r"gives 'S0copy' and 'S0' the same rows 0\.\.3"),
    (lambda d: d.update(S1=[4, 99]), r"gives 'S1' the rows \[4, 99\], outside the store's 8"),
    (lambda d: d.update(S1=[4]), r"gives 'S1' the rows \[4\], not \[first row, end\]"),
])
def test_feature_store_with_duplicated_or_broken_done_is_refused(tmp_path, edit, match):
    """A feature store header whose `done` named one slide's rows twice (S1 gone) passed complete(): S1's unwritten
    rows read as zeros in mil train and export."""
    import zarr

    from slidestream.engine import features

    st = _small(tmp_path / "st")
    features.extract_features(_pipe(), st.path, tmp_path / "f", progress=False, log=None)
    g = zarr.open_group(str(tmp_path / "f"), mode="r+")
    info = dict(g.attrs[features.ATTR])
    edit(info["done"])
    g.attrs[features.ATTR] = info
    with pytest.raises(StoreError, match=rf"feature store {tmp_path / 'f'}: .*{match}.*run `slidestream features` again"):
        features.FeatureStore(tmp_path / "f")
    with pytest.raises(StoreError, match=match):
        features.extract_features(_pipe(), st.path, tmp_path / "f", progress=False, log=None)


def test_swapped_x_and_y_column_chunks_are_refused(tmp_path):
    """x/c/0 and y/c/0 swapped (same type, codec and length) read as each other, silently: every commit now
    records the CRC32 of its rows of the columns nothing rewrites later, checked when a column is read."""
    from slidestream.engine.store import PatchStore

    st = _small(tmp_path / "st")
    x, y = st.path / "x" / "c" / "0", st.path / "y" / "c" / "0"
    assert PatchStore.open(st.path).column("x").tolist() == [0, 128, 256, 384] * 2
    a, b = x.read_bytes(), y.read_bytes()
    x.write_bytes(b)
    y.write_bytes(a)
    with pytest.raises(StoreError, match=rf"store {st.path}: column 'x' of slides 'S0' is not what its commit wrote"):
        PatchStore.open(st.path).column("x")
    with pytest.raises(StoreError, match="column 'y' of slides 'S0'"):
        PatchStore.open(st.path).table(["y"])
    assert PatchStore.open(st.path).column("label").tolist() == [0] * 4 + [1] * 4  # label: rewritten by design


# ------------------------------------------------------------------------------------ --help, option by option
@pytest.mark.parametrize("args, match", [
    (["split", "P", "--store", "S", "--kfold", "0"], r"--kfold"),  # was: 0 read as "no k-fold", a ratio split
    (["split", "P", "--store", "S", "--fold", "2"], r"--fold is for a k-fold split"),  # was: ignored silently
    (["train", "P", "--store", "S", "--out", "O", "--epochs", "0"], r"--epochs"),  # was: a FileNotFoundError traceback
    (["train", "P", "--store", "S", "--out", "O", "--synthetic", "-5"], r"--synthetic"),  # was: accepted
    (["experiment", "gan-sweep", "P", "--store", "S", "--out", "O", "--epochs", "0"], r"--epochs"),  # a traceback
])
def test_options_do_what_their_help_says(cli, tmp_path, args, match):
    st = _small(tmp_path / "st", n=8)
    p = _write(tmp_path, json.dumps({"name": "t", "classifier": {"name": "small_cnn"}}))
    names = {"P": p, "S": st.path, "O": tmp_path / "o"}
    code, out, err = cli(*[names.get(a, a) for a in args])
    assert code == 2 and __import__("re").search(match, out + err), (code, out, err)
    assert not (tmp_path / "o").exists()


def test_fold_applies_to_the_pipelines_kfold(cli, tmp_path):
    """--fold with the pipeline's training.split.kfold (no --kfold) was ignored: fold 0 every time."""
    from slidestream.engine.store import PatchStore

    st = _small(tmp_path / "st", n=8)
    p = _write(tmp_path, json.dumps({"name": "t", "training": {"split": {"kfold": 4}}}))
    tests = []
    for fold in ("0", "1"):
        assert cli("split", p, "--store", st.path, "--fold", fold)[0] == 0
        t = PatchStore.open(st.path).table(["patient_id", "split"])
        tests.append(sorted(set(t["patient_id"][t["split"] == "test"].tolist())))
    assert tests[0] != tests[1], tests


def test_replaced_feature_chunk_is_refused(tmp_path):
    """A feature chunk file replaced by another store's (same shape: it decodes fine) read as other features,
    silently: each slide's CRC32 of its written features is now kept in the header (`sums`), checked on reading."""
    import shutil

    from slidestream.engine import features

    a = _small(tmp_path / "a")
    features.extract_features(_pipe(), a.path, tmp_path / "fa", progress=False, log=None)
    b = _small(tmp_path / "b", n=3)
    features.extract_features(_pipe(), b.path, tmp_path / "fb", progress=False, log=None)
    fa = features.FeatureStore(tmp_path / "fa")
    assert set(fa.info["sums"]) == {"S0", "S1"}
    good = fa.rows()
    chunk = next(p for p in (tmp_path / "fa" / "features" / "c").rglob("*") if p.is_file())
    other = tmp_path / "fb" / chunk.relative_to(tmp_path / "fa")
    # fb's first chunk holds rows of 3 slides: make one of fa's shape from fb's rows 4..11 (other patches)
    import zarr

    g = zarr.open_group(str(tmp_path / "fb"), mode="r")
    tmp = zarr.open_group(str(tmp_path / "t"), mode="w")
    t = tmp.create_array("features", shape=fa.features.shape, dtype=fa.features.dtype, fill_value=0,
                         chunks=fa.features.chunks, compressors=features._checked())
    t[:] = np.asarray(g["features"][4:12])
    shutil.copy(next(p for p in (tmp_path / "t" / "features" / "c").rglob("*") if p.is_file()), chunk)
    assert other.exists()
    with pytest.raises(StoreError, match=rf"feature store {tmp_path / 'fa'}: the features of 'S0' \(rows 0\.\.3\) are not "
                                         r"what was written"):
        features.FeatureStore(tmp_path / "fa").rows()
    with pytest.raises(StoreError, match=r"the features of 'S1' \(rows 4\.\.7\)"):
        features.FeatureStore(tmp_path / "fa").rows(4, 8)
    assert features.FeatureStore(tmp_path / "fb").rows().shape[0] == 12 and good.shape[0] == 8


def test_swapped_feature_meta_x_and_y_are_refused(tmp_path):
    """meta/x and meta/y chunk files of a feature store swapped: export wrote each patch's y as its x, silently."""
    from slidestream.engine import features

    st = _small(tmp_path / "st")
    features.extract_features(_pipe(), st.path, tmp_path / "f", progress=False, log=None)
    assert features.FeatureStore(tmp_path / "f").column("x").tolist() == [0, 128, 256, 384] * 2
    x, y = (tmp_path / "f" / "meta" / c / "c" / "0" for c in ("x", "y"))
    a, b = x.read_bytes(), y.read_bytes()
    x.write_bytes(b)
    y.write_bytes(a)
    with pytest.raises(StoreError, match=rf"feature store {tmp_path / 'f'}: column 'x' of 'S0' is not what was written"):
        features.FeatureStore(tmp_path / "f").column("x")
    assert features.FeatureStore(tmp_path / "f").column("label").tolist() == [0] * 4 + [1] * 4
