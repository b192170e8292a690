"""Helpers of the example tests (imported by name: tests/examples is on sys.path)."""

import importlib
import os.path as osp
import sys

EXAMPLES = osp.join(osp.dirname(__file__), "..", "..", "examples")

#: flags of a tiny, fast model for every smoke run
TINY = [
    "--hidden",
    "16",
    "--layers",
    "2",
    "--heads",
    "2",
    "--ball-size",
    "16",
    "--compress-size",
    "4",
    "--topk",
    "2",
    "--knn",
    "4",
    "--no-progress",
    "--threads",
    "1",
]


def load_example(name):
    sys.path.insert(0, osp.abspath(EXAMPLES))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)
