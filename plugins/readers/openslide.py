"""OpenSlide reader: SVS, NDPI, MRXS, SCN, BIF and the other formats OpenSlide knows.

DICOM-WSI is left to the dicom reader (OpenSlide decodes damaged DICOM frames without a word): a slide
OpenSlide opens as vendor ``dicom`` is refused here, so the next reader takes it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from slidestream.engine.errors import BrokenFile
from slidestream.engine.hookspecs import ReaderPlugin, hookimpl

from .common import (check_claims, first_image, levels_out_of_order, mpp_from_tiff_tags, mpp_xy, ome_mpp,
                     openslide_misread, positive_float, read_clipped, tag_mpp_xy, tiff_level_count)


class OpenSlideSlide:
    def __init__(self, path: str, device: str = "cpu"):
        import openslide

        p = Path(path)
        if p.is_dir():
            dcm = sorted(p.glob("*.dcm"))
            if not dcm:
                raise ValueError("folder holds no .dcm files")
            p = dcm[0]
        tf = check_claims(str(p), keep=True)  # the one parse of a TIFF by tifffile, for the checks below
        try:
            misread = openslide_misread(str(p), tf)
            tiff_levels = tiff_level_count(str(p), tf) if tf is not None else 0
            ome = ome_mpp(tf) if tf is not None else None
            first = first_image(tf)
            aperio = tf is not None and (tf.pages[0].description or "").startswith("Aperio")
            tags = mpp_from_tiff_tags(tf.pages[0]) if aperio else (None, None)
        finally:
            if tf is not None:
                tf.close()
        if misread:
            raise ValueError(misread)
        self.path = path
        self._s = openslide.OpenSlide(str(p))
        self.level_dimensions = [tuple(d) for d in self._s.level_dimensions]
        self.level_downsamples = [float(d) for d in self._s.level_downsamples]
        props = self._s.properties
        if props.get("openslide.vendor") == "dicom":  # OpenSlide decodes damaged DICOM frames silently
            self._s.close()
            raise ValueError("DICOM slides are read by the dicom reader, which checks every frame it decodes")
        if props.get("openslide.vendor") == "generic-tiff" and tiff_levels > len(self.level_dimensions):
            self._s.close()
            raise ValueError("OpenSlide misses this TIFF's SubIFD pyramid levels")
        reordered = props.get("openslide.vendor") in ("generic-tiff", "aperio") and levels_out_of_order(
            first, self.level_dimensions[0])  # (other formats' first image may be a label or overview)
        if reordered:
            self._s.close()
            raise ValueError(reordered)
        xy = tag_mpp_xy if props.get("openslide.vendor") == "generic-tiff" else mpp_xy  # generic: from the TIFF tags
        self.mpp, self.mpp_y = ome or xy(props.get("openslide.mpp-x"), props.get("openslide.mpp-y"))  # OME first
        if self.mpp is None and props.get("openslide.vendor") == "aperio":  # no MPP: TIFF tags, as cuCIM, tifffile
            self.mpp, self.mpp_y = tags
        self.objective_power = positive_float(props.get("openslide.objective-power"))

    def read_region(self, location, level, size):
        import openslide

        ds = self.level_downsamples[level]

        def read(x, y, w, h):
            try:
                rgba = np.asarray(self._s.read_region((int(round(x * ds)), int(round(y * ds))), level, (w, h)))
            except openslide.OpenSlideError as e:  # libtiff/libjpeg refused the data ("Using code not yet in table")
                raise BrokenFile(f"OpenSlide cannot decode level {level} at ({x}, {y}): {e}") from None
            return rgba

        return read_clipped(read, location, level, size, self.level_dimensions[level], ds)

    def close(self) -> None:
        self._s.close()



@hookimpl
def slidestream_readers():
    return [ReaderPlugin(
        name="openslide", open=OpenSlideSlide, priority=20,
        suffixes=(".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".dcm", ""),
        summary="OpenSlide: SVS, NDPI, MRXS, SCN, BIF, ... (DICOM-WSI: the dicom reader)")]
