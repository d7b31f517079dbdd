"""The pydicom reader: DICOM-WSI files OpenSlide refuses, frame order detection, resolution, bad files."""
import csv
import json

import numpy as np
import pytest

from conftest import EXAMPLE, WSI
from slidestream.engine.errors import SlideError
from slidestream.engine.slide import open_slide

pydicom = pytest.importorskip("pydicom")

PATHML = WSI / "pathml_small_dicom_TCGA-XK-AAJU_pen.dcm"  # 42 JPEG frames, column-major, no mpp
CMU_DICOM = WSI / "dicom-cmu-1-small-region"
CMU_SVS = WSI / "CMU-1-Small-Region.svs"


def test_pathml_file_opens_with_the_dicom_reader_and_needs_mpp():
    with pytest.raises(SlideError, match=r"--mpp") as e:
        open_slide(PATHML)  # openslide: "Couldn't get image flavor"; dicom opens it but finds no resolution
    assert "\n" not in str(e.value)
    s = open_slide(PATHML, mpp=0.25)
    assert s.reader_name == "dicom" and s.mpp_source == "cohort"
    assert s.dimensions == (3236, 2638) and len(s.reader.level_dimensions) == 1
    assert s.reader.mpp is None and s.reader.objective_power is None
    s.close()


def test_pathml_frames_are_column_major_and_seamless():
    s = open_slide(PATHML, mpp=0.25)
    r = s.reader
    assert r.frame_order == ["column"]  # no DimensionOrganizationType: decided by seam continuity
    col, row = r.seam_score(0, "column"), r.seam_score(0, "row")
    assert col < row / 3 and col < 20
    thumb = s.thumbnail(16)
    assert thumb.shape == (2638 // 16, 3236 // 16, 3)
    glass = thumb[thumb.min(axis=2) > 200]
    assert len(glass) > 0.2 * thumb.shape[0] * thumb.shape[1]  # bright glass, not false (YCbCr) colours
    r_, g_, b_ = thumb.reshape(-1, 3).astype(int).T
    tissue = (thumb.mean(axis=2) < 200).reshape(-1)
    assert (r_[tissue] - g_[tissue]).mean() > 20 and (b_[tissue] - g_[tissue]).mean() > 5  # pink/purple H&E
    s.close()


def test_cmu_dicom_with_the_dicom_reader_matches_the_svs():
    svs = open_slide(CMU_SVS, order=["openslide"])
    ref = svs.reader.read_region((0, 0), 0, svs.dimensions)
    for path in (CMU_DICOM, CMU_DICOM / "level-0-frames-0-30.dcm"):
        s = open_slide(path, order=["dicom"])
        assert s.reader_name == "dicom" and s.dimensions == (2220, 2967)
        assert len(s.reader.level_dimensions) == 12 and s.reader.level_downsamples[1] == 2.0
        assert s.mpp == pytest.approx(0.499, abs=1e-3) and s.reader.frame_order[0] == "row"  # TILED_FULL
        a = s.reader.read_region((0, 0), 0, s.dimensions)
        assert np.abs(a.astype(int) - ref).mean() < 20  # JFIF frames tagged RGB decoded as YCbCr
        assert np.percentile(a.mean(axis=2), 90) > 220  # glass
        edge = s.reader.read_region((2200, 2950), 0, (64, 64))
        assert (edge[30:, 30:] == 255).all()
        s.close()


def _write_wsi(path, img, tile, image_type="VOLUME", series="1.2.3.4", sparse=True, extra=None):
    """A tiny uncompressed VL WSI instance (TILED_SPARSE with per-frame positions, frames in reverse)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    h, w = img.shape[:2]
    pos = [(x, y) for y in range(0, h, tile) for x in range(0, w, tile)]  # TILED_FULL: row-major
    if sparse:
        pos = pos[::-1]  # positions say where each frame goes
    frames = []
    for x, y in pos:
        f = np.full((tile, tile, 3), 0, np.uint8)
        part = img[y:y + tile, x:x + tile]
        f[:part.shape[0], :part.shape[1]] = part
        frames.append(f)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.6"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID, ds.Modality = series, "SM"
    ds.ImageType = ["ORIGINAL", "PRIMARY", image_type, "NONE"]
    ds.Rows = ds.Columns = tile
    ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = w, h
    ds.NumberOfFrames = len(frames)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    measures = Dataset()
    measures.PixelSpacing = [0.0005, 0.0005]
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    lens = Dataset()
    lens.ObjectiveLensPower = 20
    ds.OpticalPathSequence = Sequence([lens])
    if sparse:
        ds.DimensionOrganizationType = "TILED_SPARSE"
        items = []
        for x, y in pos:
            plane = Dataset()
            plane.ColumnPositionInTotalImagePixelMatrix, plane.RowPositionInTotalImagePixelMatrix = x + 1, y + 1
            item = Dataset()
            item.PlanePositionSlideSequence = Sequence([plane])
            items.append(item)
        ds.PerFrameFunctionalGroupsSequence = Sequence(items)
    for k, v in (extra or {}).items():
        setattr(ds, k, v)
    ds.PixelData = np.stack(frames).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_sparse_uncompressed_folder_skips_label_and_reads_positions(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    _write_wsi(tmp_path / "a.dcm", img, 32)
    _write_wsi(tmp_path / "b.dcm", img[::2, ::2], 32)
    _write_wsi(tmp_path / "label.dcm", img[:20, :20], 32, image_type="LABEL")
    s = open_slide(tmp_path, order=["dicom"])
    r = s.reader
    assert r.level_dimensions == [(90, 70), (45, 35)] and r.frame_order == ["sparse", "sparse"]
    assert r.mpp == pytest.approx(0.5) and r.objective_power == 20
    assert np.array_equal(r.read_region((0, 0), 0, (90, 70)), img)
    a = r.read_region((10, 20), 1, (40, 30))  # level-1 box (5, 10)..(45, 40); the level is 45 x 35
    assert np.array_equal(a[:25], img[::2, ::2][10:35, 5:45]) and (a[25:] == 255).all()
    assert (r.read_region((80, 60), 0, (20, 20))[10:, 10:] == 255).all()  # outside is white


def test_implausible_imaged_volume_gives_no_mpp(tmp_path):
    img = np.full((64, 64, 3), 200, np.uint8)
    # like the pathml file (15 x 15 mm for 3236 x 2638 px): a square volume on a non-square matrix -> None
    _write_wsi(tmp_path / "x.dcm", img[:, :48], 16, sparse=False,
               extra={"SharedFunctionalGroupsSequence": [], "ImagedVolumeWidth": 0.012, "ImagedVolumeHeight": 0.012,
                      "DimensionOrganizationType": "TILED_FULL"})
    assert open_slide(tmp_path / "x.dcm", order=["dicom"], mpp=1).reader.mpp is None
    _write_wsi(tmp_path / "y.dcm", img, 16, sparse=False, series="5.6",
               extra={"SharedFunctionalGroupsSequence": [], "ImagedVolumeWidth": 0.016, "ImagedVolumeHeight": 0.016})
    assert open_slide(tmp_path / "y.dcm", order=["dicom"]).reader.mpp == pytest.approx(0.25)


@pytest.mark.parametrize("kind", ["text", "ct"])
def test_non_wsi_dicom_is_refused_in_one_line(tmp_path, kind):
    p = tmp_path / "scan.dcm"
    if kind == "text":
        p.write_text("not a dicom file\n")
    else:
        from pydicom.dataset import Dataset, FileMetaDataset
        from pydicom.uid import ExplicitVRLittleEndian, generate_uid

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT image
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.Rows, ds.Columns = "CT", 4, 4
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit, ds.PixelRepresentation = 15, 0
        ds.PixelData = np.zeros((4, 4), np.uint16).tobytes()
        ds.save_as(p, enforce_file_format=True)
    with pytest.raises(SlideError) as e:
        open_slide(p)
    msg = str(e.value)
    assert "\n" not in msg and "dicom:" in msg
    assert ("no DICM marker" if kind == "text" else "not a whole-slide image") in msg


def test_extract_pathml_dicom_end_to_end(tmp_path):
    from slidestream.engine import config
    from slidestream.engine.runner import extract, read_cohort
    from slidestream.engine.store import PatchStore

    csvf = tmp_path / "slides.csv"
    with open(csvf, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["slide_path", "patient_id", "label", "age", "mpp"])
        w.writerow([str(PATHML), "P1", 1, 60, 0.5])
    # liu2020 as it is, except 512-px tiles: at 0.5 µm/px a 1024-px 10x tile is 2048 level-0 px, and the
    # one such tile that fits this 3236 x 2638 slide is under 50 % tissue
    doc = json.loads(EXAMPLE.read_text())
    doc["tiling"]["params"]["size"] = 512
    (tmp_path / "p.json").write_text(json.dumps(doc))
    summary = extract(config.load(tmp_path / "p.json"), read_cohort(csvf), tmp_path / "tmp", progress=False)
    assert summary["rows"] > 0 and summary["failed"] == 0
    store = PatchStore.open(tmp_path / "tmp")
    patches = store.patches[:]
    assert len(patches) == summary["rows"] and patches.shape[1:] == (256, 256, 3)
    assert 100 < patches.mean() < 230 and patches.std() > 10  # tissue, not glass or black
