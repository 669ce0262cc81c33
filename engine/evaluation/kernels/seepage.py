"""Dam seepage: V-notch weir flow and piezometric level (FACTS.md §5).

Elementwise and stateless, so plain NumPy (no numba kernel, no state).

- Right-angle (90°) V-notch weir: ``Q = 1.4 · H^2.5`` m³/s with ``H`` the head over the
  notch in m; returned in m³/s or L/s. A head at or below the notch (H ≤ 0) gives 0;
  NaN stays NaN.
- Piezometer: pressure head (m) = ``P`` (kPa) / 9.81; piezometric level (m, same datum
  as the sensor elevation) = sensor elevation (m) + pressure head.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = [
    "G_KPA_PER_M",
    "VNOTCH_C",
    "piezometric_level_m",
    "pressure_head_m",
    "vnotch_flow_ls",
    "vnotch_flow_m3s",
]

F8 = npt.NDArray[np.float64]

#: Q = VNOTCH_C · H^2.5 (m³/s, H in m), right-angle V-notch
VNOTCH_C = 1.4
#: kPa per metre of water head (ρ·g with ρ = 1000 kg/m³, g = 9.81 m/s²)
G_KPA_PER_M = 9.81


def vnotch_flow_m3s(head_m: F8 | float) -> F8:
    """Flow over a 90° V-notch weir in m³/s; 0 for a head at or below the notch."""
    h = np.asarray(head_m, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.where(
            h > 0, VNOTCH_C * np.power(np.maximum(h, 0.0), 2.5), np.where(np.isnan(h), np.nan, 0.0)
        )


def vnotch_flow_ls(head_m: F8 | float) -> F8:
    """Flow over a 90° V-notch weir in L/s."""
    return vnotch_flow_m3s(head_m) * 1000.0


def pressure_head_m(p_kpa: F8 | float) -> F8:
    """Water column (m) that a piezometer pressure (kPa) stands for."""
    return np.asarray(p_kpa, dtype=np.float64) / G_KPA_PER_M


def piezometric_level_m(sensor_elevation_m: F8 | float, p_kpa: F8 | float) -> F8:
    """Piezometric level (m) = sensor elevation (m) + P (kPa) / 9.81."""
    return np.asarray(sensor_elevation_m, dtype=np.float64) + pressure_head_m(p_kpa)
