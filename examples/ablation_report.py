"""Renders the docs' sections of an ablation from its ``results.json``: the
"Results" section of ``examples/README.md`` (Markdown: the tables, the
commands, the commits, the devices and a reading of the numbers) and the
figures' section of ``docs/benchmarks.rst`` (which includes the README's
tables already).

    python examples/ablation_report.py runs/ablation-md/results.json \\
        runs/ablation-cosmology/results.json              # prints both sections
    python examples/ablation_report.py md_results.json cosmology_results.json --write

``--write`` copies each ``curves.png`` found next to its ``results.json``
(``<x>_results.json`` -> ``<x>_curves.png``, or ``results.json`` ->
``curves.png``) to ``docs/_static/ablation_<example>_curves.png`` and puts the
sections into ``examples/README.md`` (the section under its heading, before
"## Multi-GPU" the first time) and ``docs/benchmarks.rst`` (between marker
comments, before "How each benchmark measures" the first time), replacing
what an earlier ``--write`` put there.  The
reading is written from the numbers alone (a difference counts when it is
larger than the two models' standard deviations over seeds together); edit
the prose after writing if the data says more.
"""

import argparse
import json
import math
import os.path as osp
import shutil
import sys
from typing import Any, Dict, List, Optional

HERE = osp.dirname(osp.abspath(__file__))
ROOT = osp.dirname(HERE)
sys.path.insert(0, HERE)
import _train  # noqa: E402
from ablation import BASELINE_NAMES, render_table  # noqa: E402

#: the README section (from its heading to the next "## " heading)
MD_HEADING = "## Results: the ablation on one GPU"
RST_START, RST_END = ".. ablation-results:start", ".. ablation-results:end"
TITLES = {"md": "AdK (md.py)", "cosmology": "Cosmology (cosmology.py)"}


def load(path: str) -> Dict[str, Any]:
    with open(path) as f:
        results = json.load(f)
    for key in ("example", "models", "baselines", "command", "commit", "device", "metric"):
        if key not in results:
            raise ValueError(f"'{path}' is not a results.json of examples/ablation.py: no '{key}'")
    return results


def _spread(a: Dict[str, Any], b: Dict[str, Any]) -> float:
    return math.hypot(a["std"] or 0.0, b["std"] or 0.0)


def compare(a: str, b: str, models: Dict[str, Any]) -> Optional[str]:
    """A sentence comparing model ``a`` with model ``b`` (lower is better)."""
    if a not in models or b not in models:
        return None
    ma, mb = models[a], models[b]
    diff = ma["mean"] - mb["mean"]
    rel = 100 * diff / mb["mean"] if mb["mean"] else float("nan")
    spread = _spread(ma, mb)
    num = f"{ma['mean']:.4g} vs {mb['mean']:.4g}, {rel:+.1f}%"
    if abs(diff) <= spread:
        return f"**{a}** and **{b}** do not differ beyond the spread over seeds ({num})."
    return f"**{a}** is {'better' if diff < 0 else 'worse'} than **{b}** ({num}, beyond the seeds' spread)."


def reading(results: Dict[str, Any]) -> List[str]:
    """Plain statements read off the numbers."""
    models, base = results["models"], results["baselines"]
    lines = []
    glob = compare("erwin-nsa", "local-only", models)
    if glob:
        m = models
        verdict = (
            "The global branches (compressed + selected) help"
            if m["erwin-nsa"]["mean"] + _spread(m["erwin-nsa"], m["local-only"])
            < m["local-only"]["mean"]
            else "The global branches (compressed + selected) do not help on this task"
        )
        lines.append(f"{verdict}: {glob}")
    for other in ("point-transformer", "mlp"):
        c = compare("erwin-nsa", other, models)
        if c:
            lines.append(c)
    if models:
        best = min(models, key=lambda k: models[k]["mean"])
        lines.append(f"Lowest test error: **{best}** ({models[best]['mean']:.4g}).")
        if base:
            name, v = min(base.items(), key=lambda kv: kv[1])
            gain = 100 * (v - models[best]["mean"]) / v
            lines.append(
                f"The best trivial baseline ({BASELINE_NAMES.get(name, name)}, {v:.4g}) is "
                + (f"beaten by {gain:.1f}%." if gain > 0 else f"not beaten ({gain:+.1f}%).")
            )
    e, lo = models.get("erwin-nsa"), models.get("local-only")
    if e and lo and e.get("solo_step_s") and lo.get("solo_step_s"):
        lines.append(
            f"Cost: erwin-nsa takes {1000 * e['solo_step_s']:.1f} ms per step alone, "
            f"local-only {1000 * lo['solo_step_s']:.1f} ms "
            f"({e['solo_step_s'] / lo['solo_step_s']:.1f}x)."
        )
    if results.get("failed_models"):
        lines.append(f"Failed (not in the table): {', '.join(results['failed_models'])}.")
    return lines


def figure_name(results: Dict[str, Any]) -> str:
    return f"ablation_{results['example']}_curves.png"


def markdown(all_results: List[Dict[str, Any]]) -> str:
    """The "Results" section of ``examples/README.md``."""
    out = [
        MD_HEADING,
        "",
        "Every model trained at an equal step budget over several seeds (`examples/ablation.py`, "
        "driven by `benchmarks/ablation_gpu.sh`); test error on the test split after the last "
        "step, mean ± standard deviation over seeds; time per step measured with each model "
        "alone; peak memory per training process.  The figures (training loss and held-out "
        "error against the step and against the time alone, mean over seeds with a min–max "
        "band) are on the benchmarks page of the documentation and in "
        "`docs/_static/ablation_<example>_curves.png`.",
    ]
    for r in all_results:
        held = next(
            (
                m["curves"]["held_out_split"]
                for m in r["models"].values()
                if m["curves"]["held_out"]
            ),
            None,
        )
        out += [
            "",
            f"### {TITLES.get(r['example'], r['example'])}",
            "",
            f"{r['steps']} steps, seeds {', '.join(map(str, r['seeds']))}; {r['device']}; "
            f"commit `{r['commit'][:12]}`"
            + (f"; held-out curves on the {held} split" if held else "")
            + ".",
            "",
            "```",
            r["command"],
            "```",
            "",
            render_table(r),
            "",
        ]
        out += [f"- {line}" for line in reading(r)]
    return "\n".join(out) + "\n"


def rst(all_results: List[Dict[str, Any]]) -> str:
    """The figures' section of ``docs/benchmarks.rst``."""
    out = [
        RST_START,
        "",
        "Ablation on one GPU: curves",
        "~~~~~~~~~~~~~~~~~~~~~~~~~~~",
        "",
        "The tables are in the results section above (from ``examples/README.md``).",
        "Training loss and held-out error of every model against the step and against",
        "its training time alone; mean over seeds, band from the lowest to the highest seed.",
        "",
    ]
    for r in all_results:
        title = TITLES.get(r["example"], r["example"])
        out += [
            f".. figure:: _static/{figure_name(r)}",
            f"   :alt: Training and held-out curves of the ablation on {title}.",
            "   :width: 100%",
            "",
            f"   {title}: {r['steps']} steps, {len(r['seeds'])} seeds, {r['device']}, "
            f"commit ``{r['commit'][:12]}``.",
            "",
        ]
    out += [RST_END]
    return "\n".join(out) + "\n"


def _insert(lines: List[str], block: str, before: List[str]) -> str:
    for k, line in enumerate(lines):
        if any(line.startswith(b) for b in before):
            return "".join(lines[:k]) + block + "\n" + "".join(lines[k:])
    return "".join(lines).rstrip("\n") + "\n\n" + block


def replace_between(text: str, start: str, end: str, block: str, before: List[str]) -> str:
    """``text`` with the lines from ``start`` to ``end`` replaced by
    ``block``; without the markers, ``block`` goes before the first line that
    starts with one of ``before`` (at the end when none does)."""
    if start in text and end in text:
        i, j = text.index(start), text.index(end) + len(end)
        return text[:i] + block.rstrip("\n") + text[j:]
    return _insert(text.splitlines(keepends=True), block, before)


def replace_section(text: str, heading: str, block: str, before: List[str]) -> str:
    """``text`` with the Markdown section under ``heading`` (to the next
    heading of its level) replaced by ``block``; without it, ``block`` goes
    before the first line that starts with one of ``before``."""
    lines = text.splitlines(keepends=True)
    level = heading.split(" ")[0] + " "
    starts = [k for k, line in enumerate(lines) if line.rstrip("\n") == heading]
    if not starts:
        return _insert(lines, block, before)
    i = starts[0]
    j = next((k for k in range(i + 1, len(lines)) if lines[k].startswith(level)), len(lines))
    return "".join(lines[:i]) + block + ("\n" if j < len(lines) else "") + "".join(lines[j:])


def figure_source(path: str) -> Optional[str]:
    folder, name = osp.split(path)
    cand = name.replace("results.json", "curves.png")
    p = osp.join(folder, cand)
    return p if cand != name and osp.isfile(p) else None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=_train.HelpFormatter)
    parser.add_argument("results", nargs="+", help="results.json files of examples/ablation.py")
    parser.add_argument(
        "--write",
        action="store_true",
        help="write the sections into examples/README.md and docs/benchmarks.rst and copy "
        "the figures to docs/_static (else print the sections)",
    )
    parser.add_argument("--root", default=ROOT, help="the repository to write into")
    args = parser.parse_args(argv)
    all_results = [load(p) for p in args.results]
    md, rs = markdown(all_results), rst(all_results)
    if not args.write:
        print(md + "\n" + rs)
        return md, rs
    for path, r in zip(args.results, all_results):
        src = figure_source(path)
        if src is None:
            raise FileNotFoundError(f"no curves.png next to '{path}' to copy")
        shutil.copyfile(src, osp.join(args.root, "docs", "_static", figure_name(r)))
    readme = osp.join(args.root, "examples", "README.md")
    with open(readme) as f:
        text = f.read()
    with open(readme, "w") as f:
        f.write(replace_section(text, MD_HEADING, md, ["## Multi-GPU"]))
    bench = osp.join(args.root, "docs", "benchmarks.rst")
    with open(bench) as f:
        text = f.read()
    with open(bench, "w") as f:
        f.write(replace_between(text, RST_START, RST_END, rs, ["How each benchmark measures"]))
    print(f"written: {readme}, {bench} and the figures in docs/_static")
    return md, rs


if __name__ == "__main__":
    main()
