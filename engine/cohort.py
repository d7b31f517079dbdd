"""Cohorts: which slides to extract, with their patient, label and age — read and checked before any work.

A cohort is a CSV (``slide_path,patient_id,label,age[,mpp][,slide_id]``), a folder of slides, or one slide.
A CSV is checked as a whole and every problem is reported at once, with its line number (one
``ConfigError``, exit 2): unreadable text, missing columns, bad labels/ages/mpp, duplicate slide paths or
ids, and a patient with two labels or two ages. Spreadsheet exports are fine: a UTF-8 byte-order mark and
CRLF line ends are accepted, header names are matched without case or surrounding spaces.

``label``, ``patient_id`` and ``age`` are required, since a store without them cannot be split, trained or
evaluated. ``unlabeled=True`` (``extract --unlabeled``) allows a CSV without them: labels are unknown (-1),
ages NaN, and each slide is its own patient (``patient_source="slide"``, as for a folder or a single slide),
which ``split`` refuses unless told where patients come from.
"""
from __future__ import annotations

import csv
import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide", ".dcm",
                  ".png", ".jpg", ".jpeg", ".bmp", ".btf", ".qptiff")  # every suffix a reader takes (.bmp, .vmu were CSVs)
LABELS = {"1": 1, "mutant": 1, "idh-mutant": 1, "mut": 1, "idhmut": 1,
          "0": 0, "wildtype": 0, "idh-wildtype": 0, "wt": 0, "idhwt": 0, "": -1, "unknown": -1, "-1": -1}
_SEP = re.compile(r"[\s_-]+")
_WORDS = {_SEP.sub("", k): v for k, v in LABELS.items() if k.isalpha() or "-" in k[1:]}  # 'idh-mutant' -> 'idhmutant'


def label_value(text: str) -> int | None:
    """The label a cell means (1 mutant, 0 wildtype, -1 unknown): a ``LABELS`` word in any case, with spaces, '_' and
    '-' between its parts ignored ('IDH mutant', 'IDH_wt', 'wild-type', 'IDH-WT'); None for anything else."""
    t = text.strip().lower()
    return LABELS[t] if t in LABELS else _WORDS.get(_SEP.sub("", t))


MISSING = ("", "na", "n/a", "nan", "none", "null")  # a number cell that says unknown (here and in a predictions CSV)
NEEDED = ("patient_id", "label", "age")  # columns a labelled cohort must have (besides slide_path)
MAX_LISTED = 20  # problems spelled out in one message; the rest are counted


@dataclass(frozen=True)
class SlideRow:
    """One slide of a cohort. ``patient_source``: "table" when the CSV gave the patient_id, "slide" when the
    slide id stands in for it (folders, single slides, ``--unlabeled`` CSVs without the column)."""

    slide_path: str
    slide_id: str
    patient_id: str
    label: int = -1
    age: float = math.nan
    mpp: float | None = None
    patient_source: str = "table"
    mpp_is_default: bool = False  # ``mpp`` is --mpp, for a slide whose file does not say (not the cohort's column)


def _own_row(path: Path, sid: str, default_mpp: float | None) -> SlideRow:
    """A slide given without a table (a folder's, or one slide): its own patient, ``--mpp`` only where the file
    does not say."""
    return SlideRow(str(path), sid, sid, mpp=default_mpp, patient_source="slide", mpp_is_default=True)


def check_mpp_option(mpp: float | None) -> None:
    """``--mpp`` of extract and predict: None or 0.001..1000 (predict ignored NaN and took 0 as the file's fault)."""
    if mpp is not None and not 1e-3 <= mpp <= 1e3:  # NaN too
        raise ConfigError(f"--mpp {mpp:g}: not a resolution; give level-0 µm per pixel in 0.001..1000 "
                          "(0.25 for 40x, 0.5 for 20x)")


def read_cohort(source: str | Path, default_mpp: float | None = None, unlabeled: bool = False) -> list[SlideRow]:
    """Slides from a cohort CSV, a folder of slides or a single slide; ConfigError listing every problem."""
    check_mpp_option(default_mpp)
    src = Path(source)
    if src.is_file() and src.suffix.lower() in SLIDE_SUFFIXES:  # a single slide
        rows = [_own_row(src, slide_id(src), default_mpp)]
    elif src.is_dir():
        rows = scan_dir(src, default_mpp)
    elif src.is_file():
        rows = read_csv(src, default_mpp, unlabeled)
    elif src.is_symlink():
        raise ConfigError(f"--slides {src}: broken symbolic link (or a link loop); point it at a cohort CSV or a folder")
    elif os.path.lexists(src):  # a pipe, device or socket ("no such file" before)
        raise ConfigError(f"--slides {src}: not a regular file (a pipe, device or socket); give a cohort CSV or a folder")
    else:
        raise ConfigError(f"--slides {src}: no such file or folder; give a cohort CSV or a folder of slides")
    if not rows:
        raise ConfigError(f"--slides {src}: no slides found")
    seen: dict[str, str] = {}
    for r in rows:  # CSV ids are checked with line numbers in read_csv; this catches folders
        if r.slide_id in seen:
            raise ConfigError(f"--slides {src}: slide id {r.slide_id!r} is used by {seen[r.slide_id]} and {r.slide_path}; "
                              "give the cohort as a CSV with a unique `slide_id` column")
        seen[r.slide_id] = r.slide_path
    return rows


def fingerprint(path: str) -> str | None:
    """``size:sha256(first 64 KiB + last 64 KiB)`` of a slide file (None for a folder, FIFO or missing file, or one
    whose first 64 KiB is one byte value: no slide, every format opens with a header): equal for byte-identical
    copies; recorded per slide so ``split`` can refuse a copy under another patient."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return None
        import hashlib

        with open(path, "rb") as f:
            head = f.read(1 << 16)
            if head.count(head[:1]) == len(head):  # two zero-filled files of one size were read whole (16 GB: 40 s)
                return None
            f.seek(max(st.st_size - (1 << 16), 0))
            return f"{st.st_size}:{hashlib.sha256(head + f.read()).hexdigest()[:32]}"
    except OSError:
        return None


def identical_copies(rows: list[SlideRow]) -> list[tuple[SlideRow, SlideRow]]:
    """Pairs of rows whose slide files are byte-identical (a copy under another name; a symbolic link is
    caught earlier by its real path). Only files of equal size are read: the first and last 64 KiB, then, where
    those agree, the whole files (``same_bytes``: not at all for links to one file). FIFOs, folders (DICOM) and missing files are skipped, never opened."""
    by_size: dict[int, list[SlideRow]] = {}
    for r in rows:
        try:
            st = os.stat(r.slide_path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_size:
            by_size.setdefault(st.st_size, []).append(r)
    pairs: list[tuple[SlideRow, SlideRow]] = []
    for group in (g for g in by_size.values() if len(g) > 1):
        first: dict[str, SlideRow] = {}
        for r in group:
            key = fingerprint(r.slide_path)
            try:
                same = key in first and same_bytes(first[key].slide_path, r.slide_path)
            except OSError:  # unreadable: the slide's own error comes when it is extracted
                continue
            if same:
                pairs.append((first[key], r))
            elif key is not None:
                first.setdefault(key, r)
    return pairs


def file_name(slide: str) -> str:
    """A slide id as a file name (extract's ``STORE.qa/<name>.png`` and progress files, export's files): itself
    when it is one (letters, digits, ``-_.``, at most 200 characters, not ``.``/``..``), else those characters
    kept, the rest ``_``, plus ``-`` and 8 hex digits of its sha1, so two slides (``a/b``, ``a_b``) never write the
    same file and ``../x`` stays in its folder."""
    import hashlib

    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in slide)[:200]
    if safe == slide and slide.strip(".") and len(slide.encode()) <= 200:
        return slide
    short = safe.encode()[:100].decode(errors="ignore")  # file names are at most 255 bytes
    return f"{short}-{hashlib.sha1(slide.encode()).hexdigest()[:8]}"


def same_bytes(a: str, b: str, block: int = 1 << 20) -> bool:
    """Whether two files hold the same bytes: one file under two names (a link) without reading it, else compared
    in 1 MiB blocks (filecmp's 8 KiB reads cost ~3x the CPU: 47 vs 14 ms for two 98 MB copies, bench/README.md)."""
    if os.path.samefile(a, b):
        return True
    x, y = bytearray(block), bytearray(block)
    with open(a, "rb") as f, open(b, "rb") as g:
        while True:
            n, m = f.readinto(x), g.readinto(y)  # a buffered file fills the block unless at the end
            if n != m or (x != y if n == block else x[:n] != y[:n]):
                return False
            if n < block:
                return True


def slide_id(p: Path) -> str:
    name = p.name
    for suf in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name if p.is_dir() else p.stem


def scan_dir(d: Path, default_mpp: float | None) -> list[SlideRow]:
    """Slide files under ``d`` (hidden files skipped; symlinked folders are not followed, so a link loop
    cannot hang the scan); a folder of DICOM files is one slide per series. A slide name that is not a regular
    file (a pipe, a device, a broken link) is never opened here but kept as a slide of its own, so extraction
    records it failed, naming why, instead of the run passing without it."""
    files, odd = [], []
    for root, dirs, names in os.walk(d):  # followlinks=False
        dirs[:] = sorted(x for x in dirs if not x.startswith(".") and not _store_part(Path(root), x))
        for n in names:
            p = Path(root) / n
            if p.suffix.lower() in SLIDE_SUFFIXES and not n.startswith("."):
                (files if p.is_file() else odd).append(p)
    rows = [_own_row(p, slide_id(p), default_mpp) for p in odd]
    dicom: dict[Path, list[Path]] = {}
    for p in sorted(files):
        if p.suffix.lower() == ".dcm":
            dicom.setdefault(p.parent, []).append(p)
        else:
            rows.append(_own_row(p, slide_id(p), default_mpp))
    for folder, dcms in dicom.items():  # a DICOM-WSI slide is a series; its levels are separate files
        series = _dicom_series(dcms)
        for first in series:
            whole_folder = len(series) == 1 and len(dcms) > 1
            path, sid = (folder, slide_id(folder)) if whole_folder else (first, slide_id(first))
            rows.append(_own_row(path, sid, default_mpp))
    return sorted(rows, key=lambda r: r.slide_path)


def _store_part(root: Path, name: str) -> bool:
    """A patch or feature store (a zarr hierarchy) or its ``STORE.qa``/``STORE.partial`` beside it: a store written
    into the slide folder must not become slides on the rerun (its QA pictures are PNGs)."""
    if (root / name / "zarr.json").is_file():
        return True
    stem, _, what = name.rpartition(".")
    return what in ("qa", "partial") and (root / stem).is_dir()


def _dicom_series(files: list[Path]) -> list[Path]:
    """The first file of each DICOM series among ``files`` (one slide per series)."""
    try:
        import pydicom
    except ImportError:
        return files[:1]
    import warnings

    first: dict[str, Path] = {}
    for f in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. over-long UIDs written by converters
                ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
                uid = str(ds.SeriesInstanceUID)
        except Exception:
            uid = str(f)  # unreadable: its own "series", so the readers report it
        first.setdefault(uid, f)
    return list(first.values())


def _number(text: str, what: str, lo: float, hi: float) -> tuple[float | None, str | None]:
    """(value, None) or (None, problem) for a cell that must be a number in [lo, hi] (empty, n/a, NaN -> None)."""
    if text.strip().lower() in MISSING:  # unknown, as in a predictions CSV ('n/a' was "not a number", 'NaN' "outside")
        return None, None
    try:
        v = float(text)
    except ValueError:
        comma = "," in text and text.replace(",", ".", 1).replace(".", "", 1).isdigit()  # 45,5 from a spreadsheet
        return None, f"{what} {text!r} is not a number" + (f" (write {text.replace(',', '.')}: a decimal point, not a "
                                                           "comma)" if comma else "")
    if not (lo <= v <= hi):
        return None, f"{what} {text!r} is outside {lo:g}..{hi:g}"
    return v, None


def _nul(path: Path, line: int, other: str) -> str:
    return (f"{path}: line {line} holds a NUL byte, which no text table has (a damaged copy, or a binary file: no "
            f"cohort CSV); save the table as CSV UTF-8{other}")


def read_csv(path: Path, default_mpp: float | None = None, unlabeled: bool = False) -> list[SlideRow]:
    """Rows of a cohort CSV; one ConfigError naming every problem with its line number."""
    other = "" if path.suffix.lower() in (".csv", ".tsv", ".txt") else ", or give a slide (.svs, .tif, .ndpi, .dcm, ...)"
    try:
        with open(path, "rb") as f:  # a binary file is refused on its first 64 KiB (a 3 GB .czi was read whole: 6 GB RSS)
            data = f.read(1 << 16)
            utf16 = data[:2] in (b"\xff\xfe", b"\xfe\xff")  # a spreadsheet's "Unicode text" (its NULs are text)
            if b"\0" in data and not utf16:
                raise ConfigError(_nul(path, data.count(b"\n", 0, data.index(0)) + 1, other))
            if not utf16:
                data[:-3].decode("utf-8-sig")  # UnicodeDecodeError here too (the last 3 bytes may be a cut character)
            data += f.read()
        # a spreadsheet's "CSV UTF-8" starts with a BOM
        text = data.decode("utf-16") if utf16 else data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}), so no cohort CSV; save the table as CSV UTF-8{other}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the cohort table: {e.strerror or e}") from None
    if "\0" in text:  # a NUL in a slide_path ended in a ValueError traceback (embedded null byte)
        raise ConfigError(_nul(path, text.count("\n", 0, text.index("\0")) + 1, other))
    lines_ = text.splitlines(keepends=True)  # a quoted cell's line break stays in the cell (it was dropped: joined names)
    head = lines_[0] if lines_ else ""
    # semicolons (spreadsheets in locales with a decimal comma) or tabs, when the header has no comma
    delimiter = next((d for d in (",", ";", "\t") if d in head), ",")
    reader = csv.DictReader(lines_, delimiter=delimiter, strict=True)
    try:
        cols = [(c or "").strip().lower() for c in reader.fieldnames or []]
    except csv.Error as e:  # a header cell over csv's 128 KiB field limit (a quote opened and never closed): a traceback
        raise ConfigError(f"{path}: line 1: {e}; check the quotes on that line") from None
    twice = sorted({c for c in cols if c and cols.count(c) > 1})
    if twice:  # csv.DictReader keeps the last of two same-named columns, silently
        raise ConfigError(f"{path}: column {', '.join(f'`{c}`' for c in twice)} appears more than once in the header "
                          "(names match without case); keep one")
    if "slide_path" not in cols:
        raise ConfigError(f"{path}: no `slide_path` column (found: {', '.join(c for c in cols if c) or 'none'}); "
                          "columns must be slide_path,patient_id,label,age[,mpp][,slide_id]")
    missing = [c for c in NEEDED if c not in cols]
    if missing and not unlabeled:
        raise ConfigError(f"{path}: no {', '.join(f'`{c}`' for c in missing)} column; add "
                          f"{'it' if len(missing) == 1 else 'them'}, or pass --unlabeled to extract without labels "
                          "(such a store cannot be split or trained on)")
    problems: list[str] = []
    out: list[SlideRow] = []
    lines: dict[str, dict] = {"path": {}, "id": {}, "dcm": {}}  # dcm: folder of a listed .dcm file -> its key
    patients: dict[str, list[tuple[int, int, float]]] = {}
    rows = iter(reader)
    while True:
        try:
            raw = next(rows)
        except StopIteration:
            break
        except csv.Error as e:
            raise ConfigError(f"{path}: line {reader.line_num + 1}: {e}; check the quotes on that line") from None
        i = reader.line_num  # physical line of the row's end (the header is line 1)
        if any("\n" in (v or "") or "\r" in (v or "") for k, v in raw.items() if k is not None):
            problems.append(f"line {i}: a quoted cell runs over several lines (a quote not closed, or a line break "
                            "in a file name: rename the file)")
            continue
        r = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items() if k is not None}
        if not any(r.values()):
            continue  # blank line
        if None in raw:
            problems.append(f"line {i}: {len(raw[None])} more cells than columns")
        if any(v is None for k, v in raw.items() if k is not None):
            problems.append(f"line {i}: {sum(v is None for v in raw.values())} fewer cells than columns")
        if not r.get("slide_path"):
            problems.append(f"line {i}: empty slide_path")
            continue
        sp = Path(os.path.expanduser(r["slide_path"]))
        if not sp.is_absolute():
            if not os.path.lexists(path.parent / sp) and os.path.lexists(sp):  # was 'file not found' at extraction
                problems.append(f"line {i}: slide_path {r['slide_path']!r} is not in the CSV's folder {path.parent} "
                                "(relative paths are relative to the CSV) but in the current folder; give it relative "
                                "to the CSV, or absolute")
            sp = path.parent / sp
        label = label_value(r.get("label", ""))
        if label is None:
            problems.append(f"line {i}: label {r.get('label')!r} is not 1/0, mutant/wildtype or empty")
            label = -1
        age, p1 = _number(r.get("age", ""), "age", 0, 130)
        mpp, p2 = _number(r.get("mpp", ""), "mpp", 1e-3, 1e3)
        problems += [f"line {i}: {p}" for p in (p1, p2) if p]
        sid = r.get("slide_id") or slide_id(sp)
        pid, source = r.get("patient_id", ""), "table"
        if not pid:
            if "patient_id" in cols and not unlabeled:
                problems.append(f"line {i}: empty patient_id")
            pid, source = sid, "slide"
        key = os.path.realpath(sp)  # a symbolic link to a slide already listed is that slide again
        if key.lower().endswith(".dcm"):  # a DICOM slide is its folder, or a .dcm file in it: the same slide
            folder = os.path.dirname(key)
            key = folder if folder in lines["path"] else key
            lines["dcm"].setdefault(folder, key)
        elif key in lines["dcm"]:
            key = lines["dcm"][key]
        for kind, k in (("path", key), ("id", sid)):
            if k in lines[kind]:
                what = f"slide {r['slide_path']!r}" if kind == "path" else f"slide id {sid!r}"
                problems.append(f"line {i}: {what} is already on line {lines[kind][k]}"
                                + ("; add a unique `slide_id` column" if kind == "id" else ""))
            lines[kind].setdefault(k, i)
        row = SlideRow(str(sp), sid, pid, label, math.nan if age is None else age,
                       default_mpp if mpp is None else mpp, source, mpp_is_default=mpp is None)
        patients.setdefault(pid, []).append((i, row.label, row.age))
        out.append(row)
    for pid, rs in patients.items():
        labels = {lab for _, lab, _ in rs if lab >= 0}
        ages = {a for _, _, a in rs if not math.isnan(a)}
        where = ", ".join(str(i) for i, _, _ in rs)
        if len(labels) > 1:
            problems.append(f"lines {where}: patient {pid!r} has labels {sorted(labels)}; a patient has one IDH status")
        elif labels and any(lab < 0 for _, lab, _ in rs):  # its slides would be stored with two labels
            problems.append(f"lines {where}: patient {pid!r} has label {labels.pop()} on some lines and none on others; "
                            "give the label on every line")
        if len(ages) > 1:
            problems.append(f"lines {where}: patient {pid!r} has ages {sorted(ages)}; give one age per patient")
        elif ages and any(math.isnan(a) for _, _, a in rs):
            problems.append(f"lines {where}: patient {pid!r} has age {ages.pop():g} on some lines and none on others; "
                            "give the age on every line")
    if problems:
        shown = "; ".join(problems[:MAX_LISTED])
        more = f"; and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise ConfigError(f"{path}: {len(problems)} problem{'s' if len(problems) > 1 else ''}: {shown}{more}")
    return out
