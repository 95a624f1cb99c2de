"""Evaluation metrics: label overlap (Dice, HD95), transform regularity (|J|, NDV, SDlogJ), TRE."""
from svreg_core.metrics.jacobian import folding_percent, jacobian_determinant, ndv_map, ndv_percent, sdlogj
from svreg_core.metrics.landmarks import tre, tre_summary
from svreg_core.metrics.overlap import dice, hd95, scored_labels

__all__ = ["dice", "hd95", "scored_labels", "jacobian_determinant", "folding_percent", "sdlogj", "ndv_map",
           "ndv_percent", "tre", "tre_summary"]
