"""Time one training step of ErwinNSA at the sizes of the published benchmarks.

    python benchmarks/train_step.py                       # all configs, ops backend auto
    python benchmarks/train_step.py --backends auto reference --compile

Configs (points x batch): ShapeNet-Car 3,586 x 1, cosmology 5,000 x 16, MD 900 x 32;
a model of ~2.2 M parameters (width 128, 6 blocks, 4 heads, m=128, c=32, s=32,
g=32, topk=4).  Trees and radius graphs are precomputed once (as the BallTree
transform does in the data loader), so the step is model + optimizer only.
Timed: median of --steps steps after --warmup, with CUDA synchronisation;
peak memory from torch.cuda.max_memory_allocated.  Anchor numbers from the
issue: the Erwin reference model takes 64 / 103 / ~118 ms per step on one H100.
"""
import argparse
import statistics
import time

import torch

from torch_geometric_nsa import ops
from torch_geometric_nsa.nn import radius_graph
from torch_geometric_nsa.nn.models import ErwinNSA

CONFIGS = {
    'shapenet-car': (3586, 1, 64.0),
    'cosmology': (5000, 16, 103.0),
    'md': (900, 32, 118.0),
}


def make_inputs(n, batch_size, device, gen):
    pos = torch.rand(n * batch_size, 3, generator=gen).to(device)
    x = torch.randn(n * batch_size, 8, generator=gen).to(device)
    y = torch.randn(n * batch_size, 3, generator=gen).to(device)
    batch = torch.arange(batch_size, device=device).repeat_interleave(n)
    return x, pos, batch, y


def bench(name, backend, dtype, compile_, args, device):
    n, bs, anchor_ms = CONFIGS[name]
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = ErwinNSA(8, args.width, 3, num_layers=args.layers, heads=args.heads,
                     ball_size=128, compress_size=32, topk=4,
                     rotate=45.0).to(device)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, pos, batch, y = make_inputs(n, bs, device, gen)
    tree, tree_rot = model.build_trees(pos, batch, batch_size=bs)
    edges = radius_graph(pos, 0.05, batch, max_num_neighbors=16)
    fwd = torch.compile(model, mode=args.compile_mode) if compile_ else model

    def step():
        if compile_ and args.compile_mode == 'reduce-overhead':
            torch.compiler.cudagraph_mark_step_begin()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
            out = fwd(x, pos, batch, edges, tree, tree_rot)
        loss = torch.nn.functional.mse_loss(out.float(), y)
        loss.backward()
        opt.step()
        return loss

    with ops.use_backend(backend):
        for _ in range(args.warmup):
            step()
        if device == 'cuda':
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(args.steps):
            t = time.perf_counter()
            step()
            if device == 'cuda':
                torch.cuda.synchronize()
            times.append((time.perf_counter() - t) * 1e3)
    ms = statistics.median(times)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == 'cuda' else 0
    return {'config': f'{name} ({n} x {bs})', 'backend': backend,
            'dtype': str(dtype).replace('torch.', ''),
            'compile': args.compile_mode if compile_ else False,
            'params (M)': params / 1e6, 'step (ms)': ms, 'peak (MiB)': peak,
            'anchor (ms)': anchor_ms, 'speed-up': anchor_ms / ms}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--configs', nargs='+', default=list(CONFIGS))
    parser.add_argument('--backends', nargs='+', default=['auto'])
    parser.add_argument('--dtypes', nargs='+', default=['bfloat16'])
    parser.add_argument('--compile', action='store_true',
                        help='also time torch.compile of the model')
    parser.add_argument('--compile-mode', default='default',
                        help="torch.compile mode, e.g. 'reduce-overhead' "
                             '(CUDA graphs)')
    parser.add_argument('--only-compiled', action='store_true',
                        help='with --compile, skip the eager runs')
    parser.add_argument('--width', type=int, default=128)
    parser.add_argument('--layers', type=int, default=6)
    parser.add_argument('--heads', type=int, default=4)
    parser.add_argument('--steps', type=int, default=20)
    parser.add_argument('--warmup', type=int, default=5)
    args = parser.parse_args()
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if device == 'cuda':
        print('card:', torch.cuda.get_device_name(), '| torch', torch.__version__)
    rows = []
    for name in args.configs:
        for backend in args.backends:
            for dt in args.dtypes:
                modes = [False, True] if args.compile else [False]
                if args.compile and args.only_compiled:
                    modes = [True]
                for comp in modes:
                    try:
                        rows.append(bench(name, backend, getattr(torch, dt),
                                          comp, args, device))
                    except Exception as e:  # report and go on
                        rows.append({'config': name, 'backend': backend,
                                     'dtype': dt, 'compile': comp,
                                     'error': f'{type(e).__name__}: {e}'[:80]})
                    print(rows[-1], flush=True)
    from ball_tree import print_table
    print('\nTraining step of ErwinNSA (median ms)')
    print_table(rows)


if __name__ == '__main__':
    main()
