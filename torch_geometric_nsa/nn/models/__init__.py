"""Models built from the Erwin NSA layer."""

from .erwin_nsa import ErwinNSA, ErwinNSABlock, SwiGLU

__all__ = ["ErwinNSA", "ErwinNSABlock", "SwiGLU"]
