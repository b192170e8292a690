"""The shared loop (examples/_train.py): DataLoader with the BallTree
transform, safe checkpoints, resume checks, zero-valued flags, --help."""

import json
import os
import os.path as osp

import pytest
import torch
from _example_helpers import TINY, load_example

_train = load_example("_train")


@pytest.fixture
def sn_args(shapenet_root):
    """A fast ShapeNet-Car run on the tiny preprocessed set of the conftest."""
    return ["--root", shapenet_root, "--split", "order", "--num-train", "3"] + TINY


def _losses(out):
    with open(osp.join(out, "metrics.jsonl")) as f:
        return [json.loads(line)["loss"] for line in f]


def _run(args, *extra):
    return load_example("shapenet_car").main(list(args) + list(extra))


def test_batches_carry_the_trees_the_model_uses(sn_args, tmp_path, monkeypatch):
    from torch_geometric_nsa.nn.models import ErwinNSA

    ex = load_example("shapenet_car")
    args = ex.get_parser().parse_args(sn_args)
    task = ex.make_task(args)
    # the datasets carry the BallTree transform of the model's sizes
    d = task.train_dataset[0]
    # (the stored index holds the slots, then the point count and the ball size)
    slots = d.ball_tree_index.numel() - 2
    assert slots % 16 == 0 and d.ball_tree_index[-1] == 16 and "ball_tree_rot_index" in d
    # a training run never builds a tree itself: it reads the collated ones
    monkeypatch.setattr(
        ErwinNSA, "_build_tree", lambda *a, **k: pytest.fail("the model built a tree")
    )
    res = _run(sn_args, "--steps", "2", "--batch-size", "2", "--out", str(tmp_path / "r"))
    assert res["scalars"]["steps"] == 2


def test_models_without_trees_get_no_transform(sn_args):
    ex = load_example("shapenet_car")
    args = ex.get_parser().parse_args(sn_args + ["--model", "mlp"])
    assert _train.tree_transform(args) is None
    assert "ball_tree_index" not in ex.make_task(args).train_dataset[0]


def test_workers_give_the_same_run(sn_args, tmp_path):
    common = list(sn_args) + ["--steps", "3", "--batch-size", "2", "--no-figures"]
    _run(common, "--out", str(tmp_path / "w0"))
    _run(common, "--out", str(tmp_path / "w1"), "--num-workers", "1")
    assert _losses(str(tmp_path / "w0")) == _losses(str(tmp_path / "w1"))


def test_resume_refuses_changed_settings(sn_args, tmp_path):
    out = str(tmp_path / "run")
    common = list(sn_args) + ["--steps", "2", "--no-figures", "--out", out]
    _run(common)
    with pytest.raises(ValueError) as e:
        _run(common, "--resume", "--ball-size", "8", "--lr", "0.01", "--seed", "1")
    msg = str(e.value)
    assert "other settings" in msg and osp.join(out, "ckpt.pt") in msg
    for flag in ("--ball-size: 16 in the checkpoint, 8 now", "--lr", "--seed"):
        assert flag in msg
    assert "--topk" not in msg
    # a different data split is a different run, too
    with pytest.raises(ValueError, match="--num-train: 3 in the checkpoint, 2 now"):
        _run(common, "--resume", "--num-train", "2")
    # the total number of steps may change, but only when asked for
    with pytest.raises(ValueError, match="--steps: 2 in the checkpoint, 4 now"):
        _run(common, "--resume", "--steps", "4")
    res = _run(common, "--resume", "--steps", "4", "--allow-change", "steps")
    assert res["scalars"]["steps"] == 4 and len(_losses(out)) == 4
    # settings that change neither model, data nor optimiser are free
    _run(common, "--resume", "--steps", "4", "--allow-change", "steps", "--log-every", "2")


def test_resume_refuses_a_planted_pickle(sn_args, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    torch.save({"model": Payload()}, out / "ckpt.pt")
    with pytest.raises(_train.CheckpointError, match="refusing to load checkpoint .*ckpt.pt"):
        _run(sn_args, "--steps", "2", "--out", str(out), "--resume")
    assert not marker.exists()


def test_corrupt_checkpoints_name_the_file(sn_args, tmp_path):
    out = str(tmp_path / "run")
    common = list(sn_args) + ["--steps", "2", "--no-figures", "--out", out]
    _run(common)
    path = osp.join(out, "ckpt.pt")
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(_train.CheckpointError, match=f"cannot read checkpoint '{path}'"):
        _run(common, "--resume")
    torch.save({"step": 1}, path)
    with pytest.raises(_train.CheckpointError, match="lacks model, optimizer, rng, args"):
        _run(common, "--resume")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        _run(list(sn_args) + ["--out", str(tmp_path / "none"), "--resume"])


def test_rng_states_round_trip_through_a_safe_load(tmp_path):
    import random

    import numpy as np

    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    np.random.normal()  # a cached Gaussian in numpy's state
    state = _train.rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (random.random(), np.random.normal(), torch.rand(1).item())
    _train.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.normal(), torch.rand(1).item()) == expected


def test_partial_metrics_line_does_not_block_resume(sn_args, tmp_path):
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    common = list(sn_args) + ["--steps", "4", "--ckpt-every", "2", "--no-figures"]
    _run(common, "--out", full)
    assert _run(common, "--out", part, "--stop-after", "3") == {}
    with open(osp.join(part, "metrics.jsonl"), "a") as f:
        f.write('{"step": 4, "loss": 0.12')  # killed while writing
    _run(common, "--out", part, "--resume")
    assert _losses(part) == _losses(full)


def test_malformed_metrics_line_is_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match="metrics.jsonl', line 2"):
        _train.read_jsonl(str(path))


def test_zero_flags(sn_args, tmp_path, capsys):
    out = str(tmp_path / "run")
    res = _run(sn_args, "--steps", "2", "--ckpt-every", "0", "--log-every", "0", "--out", out)
    assert res["scalars"]["steps"] == 2
    assert not osp.exists(osp.join(out, "ckpt.pt"))
    assert os.path.getsize(osp.join(out, "metrics.jsonl")) == 0
    with pytest.raises(SystemExit):
        _run(sn_args, "--batch-size", "0", "--out", out)
    assert "--batch-size: must be a positive integer (got 0)" in capsys.readouterr().err


def test_too_few_samples_for_the_batch_size(sn_args, tmp_path):
    with pytest.raises(ValueError, match="3 training samples are too few .* --batch-size"):
        _run(sn_args, "--batch-size", "4", "--out", str(tmp_path / "r"))


@pytest.mark.parametrize("name", ["md", "shapenet_car", "cosmology", "ablation"])
def test_help_shows_every_flag_with_its_default(name, capsys):
    ex = load_example(name)
    with pytest.raises(SystemExit):
        ex.main(["--help"]) if name == "ablation" else ex.get_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    parser = ex.get_parser()
    for action in parser._actions:
        if action.dest == "help":
            continue
        assert action.help and action.help != "==SUPPRESS==", f"{name}: {action.option_strings}"
        assert action.option_strings[0] in text
    if name != "ablation":
        assert "(default: erwin-nsa)" in text
    else:  # the whole description, to its last sentence
        assert "a changed one never mixes old results in." in " ".join(text.split())
    assert "(default:" in text


def test_ablation_reruns_when_settings_change(sn_args, tmp_path, capsys):
    ab = load_example("ablation")
    out = str(tmp_path / "ab")
    common = ["--example", "shapenet_car", "--models", "mlp", "--out", out] + list(sn_args)
    metrics = osp.join(out, "mlp-seed0", "test_metrics.json")
    ab.main(common + ["--steps", "2"])
    ab.main(common + ["--steps", "3"])
    with open(metrics) as f:
        assert json.load(f)["steps"] == 3
    capsys.readouterr()
    ab.main(common + ["--steps", "3"])
    assert "reusing" in capsys.readouterr().out
    ab.main(common + ["--steps", "3", "--hidden", "8"])
    with open(osp.join(out, "mlp-seed0", "args.json")) as f:
        assert json.load(f)["hidden"] == 8


def test_settings_added_later_match_older_checkpoints():
    setting_differences = _train.setting_differences
    old = {"model": "erwin-nsa", "steps": 10}  # written before --compressed-bias existed
    assert setting_differences(old, dict(old, compressed_bias=False)) == []
    assert setting_differences(old, dict(old, compressed_bias=True)) == [
        "--compressed-bias: False in the checkpoint, True now"
    ]
