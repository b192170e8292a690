"""Test helpers shipped with the package, for your own models too."""

from .layout import padded_slots
from .leakage import assert_no_leakage

__all__ = ["assert_no_leakage", "padded_slots"]
