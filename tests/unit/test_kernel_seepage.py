"""Seepage formulas (FACTS.md §5) on hand-computed values."""

from __future__ import annotations

import math

import numpy as np

from engine.evaluation.kernels.seepage import (
    piezometric_level_m,
    pressure_head_m,
    vnotch_flow_ls,
    vnotch_flow_m3s,
)


def test_vnotch_weir() -> None:
    # H = 0.1 m: 1.4 * 0.1**2 * sqrt(0.1) = 0.014 * 0.316227766 m³/s = 4.427 L/s
    assert math.isclose(float(vnotch_flow_m3s(0.1)), 0.014 * math.sqrt(0.1), rel_tol=1e-12)
    assert math.isclose(float(vnotch_flow_ls(0.1)), 4.42718872, rel_tol=1e-8)
    got = vnotch_flow_ls(np.array([-0.01, 0.0, np.nan, 0.2]))
    assert got[:2].tolist() == [0.0, 0.0]
    assert math.isnan(got[2])
    # doubling the head multiplies the flow by 2**2.5
    assert math.isclose(got[3] / float(vnotch_flow_ls(0.1)), 2**2.5, rel_tol=1e-12)


def test_piezometer() -> None:
    assert math.isclose(float(pressure_head_m(98.1)), 10.0, rel_tol=1e-12)
    got = piezometric_level_m(np.array([100.0, 52.5]), np.array([98.1, 0.0]))
    np.testing.assert_allclose(got, [110.0, 52.5], rtol=1e-12)
