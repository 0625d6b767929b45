"""Visualisation: overlays, contact sheets."""

from common.viz.overlay import contact_sheet, heat_colormap, overlay

__all__ = ["contact_sheet", "heat_colormap", "overlay"]
