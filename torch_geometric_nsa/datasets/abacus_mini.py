"""Fetches the small Abacus N-body run ``Mini_N64_L32`` that
:class:`~torch_geometric_nsa.datasets.CosmologyHalos` uses by default::

    python -m torch_geometric_nsa.datasets.abacus_mini [--dir DIR]

The run (262,144 particles in a 32 Mpc/h periodic box at z = 0, about 4 MB)
ships only in the source distribution of the PyPI package ``abacusutils``, in
its ``tests/Mini_N64_L32`` folder.  This command asks pip for that sdist
(``pip download --no-deps --no-binary :all: abacusutils==2.1.2``) into a
temporary folder and extracts that one folder, and nothing else, into
``DIR/Mini_N64_L32``; ``DIR`` defaults to
``$TORCH_GEOMETRIC_NSA_DATA/abacus_mini`` or
``~/.cache/torch_geometric_nsa/abacus_mini``, where the dataset looks by
default.  ``--sdist FILE`` extracts from an sdist already at hand (offline).

Reading the files needs the ``abacusnbody`` readers of ``abacusutils``
(``pip install abacusutils``, the ``cosmology`` extra); they are GPL and are
used as a dependency, never copied.
"""

import argparse
import glob
import os
import os.path as osp
import shutil
import subprocess
import sys
import tarfile
import tempfile
from typing import List, Optional, Sequence

from ._utils import DataFormatError, default_root

#: The abacusutils release whose sdist holds the run.
ABACUS_VERSION = "2.1.2"
#: The run's folder name, inside the sdist's ``tests/`` and inside the cache.
MINI = "Mini_N64_L32"
#: The command that fetches it.
FETCH_COMMAND = "python -m torch_geometric_nsa.datasets.abacus_mini"


def default_cache_dir() -> str:
    """``$TORCH_GEOMETRIC_NSA_DATA/abacus_mini`` or
    ``~/.cache/torch_geometric_nsa/abacus_mini``."""
    return default_root("abacus_mini")


def mini_dir(cache_dir: Optional[str] = None) -> str:
    """Where :func:`fetch` puts the run: ``<cache_dir>/Mini_N64_L32``."""
    return osp.join(cache_dir or default_cache_dir(), MINI)


def pip_command(dest: str, version: str = ABACUS_VERSION) -> List[str]:
    """The pip call that downloads the sdist (no wheel: only the sdist has
    the run) into ``dest``."""
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        f"abacusutils=={version}",
        "-d",
        dest,
    ]


def extract_mini(sdist: str, cache_dir: Optional[str] = None) -> str:
    """Extracts ``<top>/tests/Mini_N64_L32`` (and nothing else) of an
    abacusutils sdist into ``<cache_dir>/Mini_N64_L32``, replacing an older
    copy only once the new one is complete.  Only regular files and folders
    are written, at paths built from checked name parts (no links, no ``..``).

    Returns:
        The extracted folder.
    """
    cache_dir = cache_dir or default_cache_dir()
    try:
        tar = tarfile.open(sdist, "r:*")
    except (OSError, tarfile.TarError) as e:
        raise DataFormatError(f"Malformed sdist '{sdist}': not a readable tar archive ({e})") from e
    with tar:
        picked = []
        for m in tar.getmembers():
            parts = m.name.replace("\\", "/").split("/")
            if len(parts) < 3 or parts[1:3] != ["tests", MINI]:
                continue
            rel = [p for p in parts[3:] if p]
            if any(p in (".", "..") for p in rel) or m.name.startswith("/"):
                raise DataFormatError(f"Malformed sdist '{sdist}': unsafe member path '{m.name}'")
            if not (m.isfile() or m.isdir()):
                raise DataFormatError(
                    f"Malformed sdist '{sdist}': '{m.name}' is a link or a special file"
                )
            picked.append((m, rel))
        if not any(m.isfile() for m, _ in picked):
            raise DataFormatError(
                f"Malformed sdist '{sdist}': no 'tests/{MINI}' folder (is it the abacusutils "
                f"{ABACUS_VERSION} sdist?)"
            )
        os.makedirs(cache_dir, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{MINI}.", dir=cache_dir)
        try:
            for m, rel in picked:
                dest = osp.join(tmp, *rel)
                if m.isdir():
                    os.makedirs(dest, exist_ok=True)
                    continue
                os.makedirs(osp.dirname(dest), exist_ok=True)
                src = tar.extractfile(m)
                with src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out)
            if not glob.glob(osp.join(tmp, "slices", "z*", "*", "*.asdf")):
                raise DataFormatError(
                    f"Malformed sdist '{sdist}': 'tests/{MINI}' has no 'slices/z*/*/*.asdf' files"
                )
            final = mini_dir(cache_dir)
            if osp.isdir(final):
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def fetch(
    cache_dir: Optional[str] = None, version: str = ABACUS_VERSION, quiet: bool = False
) -> str:
    """Downloads the abacusutils sdist with pip into a temporary folder and
    extracts ``tests/Mini_N64_L32`` with :func:`extract_mini`.

    Returns:
        The extracted folder.
    """
    with tempfile.TemporaryDirectory(prefix="abacus_sdist_") as tmp:
        cmd = pip_command(tmp, version)
        out = subprocess.run(cmd, capture_output=quiet, text=True)
        if out.returncode != 0:
            detail = (out.stderr or "").strip().splitlines()[-1:] if quiet else []
            raise RuntimeError(
                f"'{' '.join(cmd)}' failed with exit code {out.returncode}"
                + (f": {detail[0]}" if detail else "")
                + ".  It needs access to PyPI; with the sdist at hand, run "
                f"'{FETCH_COMMAND} --sdist abacusutils-{version}.tar.gz' instead."
            )
        found = sorted(glob.glob(osp.join(tmp, "abacusutils-*.tar.gz")))
        if not found:
            raise RuntimeError(f"'{' '.join(cmd)}' left no abacusutils-*.tar.gz in '{tmp}'")
        return extract_mini(found[0], cache_dir)


def main(argv: Optional[Sequence[str]] = None) -> str:
    parser = argparse.ArgumentParser(
        prog=FETCH_COMMAND,
        description=(
            f"Fetch the small Abacus N-body run {MINI} (the default data of CosmologyHalos) "
            f"from the abacusutils=={ABACUS_VERSION} source distribution on PyPI."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--dir",
        default=default_cache_dir(),
        help=f"cache folder; the run goes to DIR/{MINI}.  CosmologyHalos finds the default "
        f"one by itself; for another, pass abacus_dir='DIR/{MINI}' or set ${{ABACUS_MINI_N64_L32}}",
    )
    parser.add_argument("--version", default=ABACUS_VERSION, help="abacusutils release")
    parser.add_argument(
        "--sdist", default=None, help="extract from this abacusutils sdist instead of pip"
    )
    args = parser.parse_args(argv)
    if args.sdist:
        path = extract_mini(args.sdist, args.dir)
    else:
        path = fetch(args.dir, args.version)
    print(f"Abacus {MINI} extracted to {path}")
    try:
        import abacusnbody  # noqa: F401
    except ImportError:
        print("Reading it needs abacusutils' readers: pip install abacusutils")
    return path


if __name__ == "__main__":  # pragma: no cover
    main()
