"""Red team of the reading side, round 6: a deterministic fuzzer (tests/fuzzread.py) over the small real SVS,
OME-TIFF and DICOM slides of tests/data. Each damaged copy must be refused in one line naming the file, or read
with the file's own pixels (other pixels only after damage inside one tile's compressed data that still
decodes), within 10 s, without a traceback, a crash or more than 2 GB. ``python tests/fuzzread.py`` runs the
whole campaign; the cases kept here are one or more of each kind of damage, and every one that failed."""
import pytest

import fuzzread

KEEP = {
    "svs": ["svs-ifd0-flip0", "svs-ifd0-flip1", "svs-ifd0-flip2", "svs-header-flip2", "svs-ifd1-flip0",
            "svs-offsets0-flip0", "svs-counts0-flip2", "svs-jpegtables0-flip0", "svs-jpegtables0-flip3",
            "svs-tile-flip0", "svs-tile-flip4", "svs-tilehead-flip1", "svs-trunc0.5", "svs-trunc-last-tile",
            "svs-zero4k-1", "svs-zerotile0", "svs-zero-tail", "svs-dup-entry2", "svs-count324-ffffffff",
            "svs-ifd-count-ffff", "svs-entry262-0", "svs-entry322-1"],
    "ome": ["ome-ifd0-flip3", "ome-tile-flip2", "ome-trunc0.9", "ome-zerotile1", "ome-counts0-flip1",
            "ome-entry259-0"],
    "dicom": ["dicom0-header-flip14", "dicom0-header-flip23", "dicom0-item-flip1", "dicom0-trunc0.9",
              "dicom1-frame-flip2", "dicom1-zero-tail"],
    "dcm1": ["dcm1-header-flip3", "dcm1-bot-flip0", "dcm1-frame-flip0", "dcm1-trunc0.5"],
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    out = {}
    for kind, names in KEEP.items():
        ref = fuzzread.read_all(str(fuzzread.SOURCES[kind]))
        for name, path in fuzzread.cases(kind, folder / kind, only=set(names)).items():
            out[name] = (path, ref)
    return out


@pytest.mark.parametrize("name", [n for names in KEEP.values() for n in names])
def test_damaged_copy_is_refused_in_one_line_or_read_right(corpus, name):
    path, ref = corpus[name]
    res = fuzzread.run(path, ref)
    assert fuzzread.acceptable(name, res), res


@pytest.mark.parametrize("name", ["svs-ifd0-flip2", "ome-ifd0-flip3"])
def test_tiff_without_photometric_is_refused(corpus, name):
    """One damaged directory entry (the tag code, or its type) lost the PhotometricInterpretation tag: cuCIM read
    the SVS as other colours (20 of 30 boxes off, mean up to 46 grey levels), the tifffile reader the OME-TIFF
    as inverted gray (all 9 boxes, mean 111), without a word."""
    path, ref = corpus[name]
    res = fuzzread.run(path, ref)
    assert res["outcome"] == "refused", res
    assert res["why"].endswith("has no PhotometricInterpretation tag (how its samples are colours): a broken header")


@pytest.mark.parametrize("name", ["dicom0-header-flip14", "dicom0-header-flip23"])
def test_dicom_level_file_with_damaged_sop_class_is_refused_not_skipped(corpus, name):
    """A flipped byte in a level-0 file's header (a length that swallows the rest of the header) also damaged
    its MediaStorageSOPClassUID: the file was skipped as no whole-slide image and the folder opened with
    level 1 (1110 x 1483) as its level 0, silently: patches at twice the asked scale."""
    path, ref = corpus[name]
    res = fuzzread.run(path, ref)
    assert res["outcome"] == "refused", res
    assert "level-0-frames-0-30.dcm: a whole-slide DICOM file without a readable header or pixel data" in res["why"]
