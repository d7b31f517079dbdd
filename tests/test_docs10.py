"""README and --help true to the code: every `slidestream ...` command line in README's code blocks names an
existing subcommand and existing options of it; every `--option` README's prose or a command's --help names
exists, on the command named just before it where one is; what `slidestream plugins` says of the readers
matches what they open."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OPT = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _tree():
    import typer

    from slidestream.engine.cli import app

    return typer.main.get_command(app)


def _options(cmd) -> set[str]:
    return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}


def _commands(cmd, path=()):
    """(path, command) of every leaf command."""
    if hasattr(cmd, "commands"):  # typer runs its own copy of click: a group is what has subcommands
        for name, sub in cmd.commands.items():
            yield from _commands(sub, (*path, name))
    else:
        yield path, cmd


def _walk(root, words):
    """The command the leading words name, and the words after them (None when the first word names none)."""
    cmd, i = root, 0
    while hasattr(cmd, "commands") and i < len(words) and words[i] in cmd.commands:
        cmd, i = cmd.commands[words[i]], i + 1
    return (cmd, words[i:]) if i and not hasattr(cmd, "commands") else (None, words)


def _check_line(root, line: str, everywhere: set[str]) -> list[str]:
    """A command line (`slidestream SUB ... --opt ...`, README's `[--opt VALUE]` notation included): its
    subcommand exists and every option is one of that subcommand's. Returns what is wrong."""
    words = shlex.split(line.split(" > ")[0], comments=True)
    if words and words[0] == "slidestream":
        words = words[1:]
    cmd, rest = _walk(root, words)
    if cmd is None:
        return [f"{line!r}: no such subcommand"]
    opts = _options(cmd)
    return [f"{line!r}: {cmd.name} has no option {o}" for w in rest for o in OPT.findall(w.strip("[]").split("=")[0])
            if w.strip("[]").startswith("--") and o not in opts]


def _check_prose(root, text: str, default, everywhere: set[str], where: str) -> list[str]:
    """Every --option in prose: an option of the (sub)command named by the one or two words just before it
    (`mil train --folds`, `with train --fusion-cv`), else of ``default`` (the command whose help it is), else
    (README) of some command."""
    bad = []
    for m in OPT.finditer(text):
        before = re.findall(r"[a-z][a-z-]*", text[max(0, m.start() - 40):m.start()].split("`")[-1].rsplit("(", 1)[-1])
        cmd = None
        if text[m.start() - 1:m.start()] in (" ", "`"):
            for n in (2, 1):
                if len(before) >= n and text[:m.start()].rstrip("` ").endswith(" ".join(before[-n:])):
                    cmd, rest = _walk(root, before[-n:])
                    if cmd is not None and not rest:
                        break
                    cmd = None
        opts = _options(cmd) if cmd is not None else _options(default) if default is not None else everywhere
        if m[0] not in opts:
            bad.append(f"{where}: {m[0]} ({(cmd or default).name if (cmd or default) else 'no command'} has none): "
                       f"...{text[max(0, m.start() - 50):m.end() + 10]}...")
    return bad


def _readme_parts(text: str):
    """README's bash code blocks (continuation lines joined) and its prose (code blocks, python/shell lines
    of other programs and its `python ...` spans taken out)."""
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    prose = re.sub(r"`(?:python |[\w/.]+\.(?:py|sh)\b)[^`]*`", "", prose)  # other programs' options
    lines = [ln.strip() for b in blocks for ln in b.replace("\\\n", " ").splitlines()]
    return [ln for ln in lines if ln.startswith("slidestream ")], prose


def test_readme_command_lines_and_options_exist():
    root = _tree()
    everywhere = set().union(*(_options(c) for _, c in _commands(root)))
    lines, prose = _readme_parts((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(lines) >= 35  # the parse found README's command lines
    bad = [b for ln in lines for b in _check_line(root, ln, everywhere)]
    for ln in lines:  # a comment's options (`# one row per patient (--batch-size, --workers: ...)`): its command's
        if " #" in ln:
            cmd, _ = _walk(root, shlex.split(ln.split(" #")[0])[1:])
            bad += _check_prose(root, ln.split(" #", 1)[1], cmd, everywhere, f"README: {ln}")
    bad += _check_prose(root, prose, None, everywhere, "README")
    assert not bad


def test_help_texts_name_existing_options():
    """Each command's help and its options' help name options of that command, or of the command they name
    (`slidestream mil train --features`, `evaluate --bundle`)."""
    root = _tree()
    everywhere = set().union(*(_options(c) for _, c in _commands(root)))
    bad = []
    for path, cmd in _commands(root):
        texts = [cmd.help or ""] + [getattr(p, "help", None) or "" for p in cmd.params]
        bad += [b for t in texts for b in _check_prose(root, t, cmd, everywhere, " ".join(path))]
    assert not bad


def test_the_checks_catch_a_misspelt_or_misplaced_option():
    """The checks above fail on a broken README line or help text (they are not vacuous)."""
    root = _tree()
    everywhere = set().union(*(_options(c) for _, c in _commands(root)))
    assert _check_line(root, "slidestream extract P --slides c.csv --out s.zarr", everywhere) == []
    assert _check_line(root, "slidestream extract P --slide c.csv --out s.zarr", everywhere)
    assert _check_line(root, "slidestream mil train P --feature f.zarr --out m", everywhere)
    assert _check_line(root, "slidestream gan sampel g --n 3", everywhere)
    assert _check_line(root, "slidestream bench decode [SLIDE] [--levels 1]", everywhere)
    assert _check_prose(root, "use `split --folds 5`", None, everywhere, "x")  # a mil train option, not split's
    assert _check_prose(root, "the `--no-qaa` option", None, everywhere, "x")
    assert _check_prose(root, "use `mil train --folds 5` or `--no-qa`", None, everywhere, "x") == []
    lines, _ = _readme_parts("```bash\nslidestream train P --store s \\\n    --arch resnet50 --epoch 3\n```\n")
    assert lines and _check_line(root, lines[0], everywhere)


def test_reader_summaries_say_which_reader_takes_dicom():
    """`slidestream plugins` said OpenSlide reads DICOM-WSI and the dicom reader takes what OpenSlide cannot
    open; the code is the other way round: OpenSlide opens the DICOM test slide, and the openslide reader
    refuses it so the dicom reader takes it (README: 'It leaves DICOM-WSI to the dicom reader')."""
    openslide = pytest.importorskip("openslide")
    from slidestream.engine import registry
    from slidestream.engine.errors import SlideError
    from slidestream.engine.slide import open_slide

    dicom = ROOT / "tests" / "data" / "wsi" / "dicom-cmu-1-small-region"
    openslide.OpenSlide(str(next(dicom.glob("level-0-*.dcm")))).close()  # OpenSlide can open it
    with pytest.raises(SlideError, match="openslide: DICOM slides are read by the dicom reader"):
        open_slide(dicom, order=["openslide"])
    readers = registry.plugins("reader")
    assert "DICOM" not in readers["openslide"].summary.split("...")[0]  # not among the formats it reads
    assert "OpenSlide cannot open" not in readers["dicom"].summary


def test_extract_help_names_the_feature_store_meta_columns():
    """`extract --help` listed the meta columns of a --features-only store without `synthetic`."""
    import typer

    from slidestream.engine.cli import app
    from slidestream.engine.features import CARRIED

    help_text = typer.main.get_command(app).commands["extract"].help
    assert f"meta columns ({', '.join(CARRIED)})" in " ".join(help_text.split())


def test_readme_names_where_the_split_settings_are_recorded(tmp_path, cli):
    """README said `--patient-from` is 'recorded in the manifest's `split`'; a store has no manifest (that
    layout is refused): `split --patient-from` writes it into the `split` of the store's `slidestream`
    attribute, which README now names with its keys."""
    import json

    import numpy as np

    from slidestream.engine import config
    from slidestream.engine.store import PatchStore

    pipe = config.with_defaults({"name": "t", "magnification": 10, "patches": {"size": 16}, "store": {"chunk": 8}})
    st = PatchStore.create(tmp_path / "s.zarr", 16, pipe["store"], {"extraction_hash": config.extraction_hash(pipe),
                                                                   "pipeline": pipe})
    for i in range(8):
        st.append(f"S{i}", np.zeros((2, 16, 16, 3), np.uint8), {"slide_id": f"S{i}", "patient_id": "",
                  "label": i % 2, "age": 40.0 + i, "x": np.arange(2) * 64, "y": np.zeros(2), "size0": 64}, {"status": "done"})
    (tmp_path / "p.json").write_text(json.dumps({"name": "t", "magnification": 10, "patches": {"size": 16}}))
    code, _, err = cli("split", tmp_path / "p.json", "--store", tmp_path / "s.zarr", "--patient-from", "slide")
    assert code == 0, err
    attrs = json.loads((tmp_path / "s.zarr" / "zarr.json").read_text())["attributes"]
    assert attrs["slidestream"]["split"]["patient_from"] == "slide"
    assert not list((tmp_path / "s.zarr").glob("manifest*"))
    text = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    said = re.search(r"`--patient-from slide` \(each slide its own patient, explicitly\)\. Both rewrite the store's "
                     r"`patient_id` column; the choice is recorded (.*?)\. `split` warns", text)
    assert said and "manifest" not in said[1]
    assert all(f"`{k}`" in said[1] for k in ("patient_from", "split", "slidestream")), said[1]


def test_every_example_pipeline_validates_against_slidestream_schema_and_extracts_a_slide(cli, tmp_path):
    """Each pipeline in schemas/examples/ validates against what `slidestream schema` prints, cuts patches
    from one (synthetic 40x) slide with `extract`, and is named in README's Layout (uni_abmil.json was not)."""
    import json

    import jsonschema

    from slidestream.engine.benchslide import make_slide

    code, printed, _ = cli("schema")
    assert code == 0
    validator = jsonschema.Draft202012Validator(json.loads(printed))
    make_slide(tmp_path / "s.svs", size=(4096, 4096))
    examples = sorted((ROOT / "schemas" / "examples").glob("*.json"))
    layout = re.search(r"^schemas/ +(.*)$", (ROOT / "README.md").read_text(encoding="utf-8"), re.M)[1]
    assert len(examples) >= 2
    for path in examples:
        assert [e.message for e in validator.iter_errors(json.loads(path.read_text()))] == [], path.name
        code, out, err = cli("extract", path, "--slides", tmp_path / "s.svs", "--out", tmp_path / f"{path.stem}.zarr",
                             "--json", "--no-qa", "--quiet")
        summary = json.loads(out[out.index("{"):])
        assert code == 0 and summary["slides"][0]["status"] == "done" and summary["rows"] > 0, (path.name, err)
        assert path.name in layout, f"README's Layout does not name schemas/examples/{path.name}"


def test_every_option_and_argument_has_help():
    """`gan grid --seed`, `gan eval --seed` and `bench train --batch` showed no text in --help."""
    bare = [f"{' '.join(path)} {p.name}" for path, cmd in _commands(_tree()) for p in cmd.params
            if not (getattr(p, "help", None) or "").strip()]
    assert not bare


def test_extract_slides_help_names_every_cohort_column_the_code_reads(tmp_path):
    """`extract --help` gave the cohort columns as slide_path,patient_id,label,age[,mpp]; the code also takes
    `slide_id` (README names it), and one slide file as --slides. Each column the help names is read."""
    import typer

    from slidestream.engine.cli import app
    from slidestream.engine.cohort import read_cohort

    param = next(p for p in typer.main.get_command(app).commands["extract"].params if p.name == "slides")
    columns = re.search(r"\(([\w,\[\]]+)\)", param.help)[1].replace("[", "").replace("]", "").split(",")
    slide = ROOT / "tests" / "data" / "wsi" / "CMU-1-Small-Region.svs"
    values = {"slide_path": str(slide), "patient_id": "P1", "label": "mutant", "age": "50", "mpp": "0.25", "slide_id": "X7"}
    (tmp_path / "c.csv").write_text(",".join(columns) + "\n" + ",".join(values[c] for c in columns) + "\n")
    row = read_cohort(tmp_path / "c.csv")[0]
    assert (row.slide_id, row.patient_id, row.label, row.age, row.mpp) == ("X7", "P1", 1, 50.0, 0.25)
    assert "one slide" in param.help and read_cohort(slide)[0].slide_id == "CMU-1-Small-Region"
