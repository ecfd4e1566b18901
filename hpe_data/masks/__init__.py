"""Pose-aware synthetic face masks with per-landmark occlusion labels (`hpe-data build-masked`).

geometry: mask surface and face proxy from a face's 3D landmarks; styles: kinds, colours, textures;
composite: texture, shading from the face, blur/noise matching and blending; stage: the runner stage.
"""
from .stage import FaceMask, Unmaskable, build_masked, mask_face, mask_item, output_name, warm_up
from .styles import (COVERAGE_MODES, PROFILES, STYLE_SETS, Style, parse_coverage, parse_styles, sample_style,
                     style_set_of, style_table)

__all__ = ["COVERAGE_MODES", "FaceMask", "PROFILES", "STYLE_SETS", "Style", "Unmaskable", "build_masked",
           "mask_face", "mask_item", "output_name", "parse_coverage", "parse_styles", "sample_style",
           "style_set_of", "style_table", "warm_up"]
