"""Test helpers for users of capi_fast: a CAPI simulator served over real HTTP on loopback."""

from capi_fast.testing.simulator import CapiSimulator, Fault

__all__ = ["CapiSimulator", "Fault"]
