"""Test helpers shipped with the package, for your own models too."""
from .leakage import assert_no_leakage

__all__ = ['assert_no_leakage']
