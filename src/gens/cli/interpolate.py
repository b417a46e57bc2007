"""``gens interpolate RUN``: decoded straight lines in latent space (the supplement's Figs. 5-6)."""

from __future__ import annotations

from pathlib import Path

HELP = "interpolate in a trained run's latent space (random latent pairs or pairs of test images)"
DESCRIPTION = (
    "Decode points on straight lines z(t) = (1 - t) z_a + t z_b, t in [0, 1]. --mode random: z_a, z_b drawn "
    "from the run's latent distribution; --mode test: z_a = E(x_a), z_b = E(x_b) for random pairs of test "
    "images, shown with the originals at both ends. One row per pair."
)


def add_arguments(p) -> None:
    import argparse

    S = argparse.SUPPRESS  # no "(default: None)" in --help; read with getattr
    p.add_argument("run", metavar="RUN", help="run folder written by `gens train`")
    p.add_argument("--mode", default="random", choices=["random", "test"], help="endpoints")
    p.add_argument("--pairs", type=int, default=8, help="number of pairs (rows)")
    p.add_argument("--steps", type=int, default=10, help="points per line, endpoints included")
    p.add_argument("--data", default=S, help="data source for --mode test (default: the run's)")
    p.add_argument("--seed", type=int, default=0, help="seed choosing the pairs")
    p.add_argument("--out", default=S, help="PNG path (default: RUN/interpolate-<mode>.png); FILE.npy: the "
                   "array goes there, the PNG beside it")
    p.add_argument("--checkpoint", default="last", choices=["last", "best"], help="which checkpoint")
    p.add_argument("--npy", action="store_true", default=S, help="also save the decoded grid (pairs, steps, ...) as .npy")


def interpolate(module, z_a, z_b, steps: int):
    """Decode straight lines between latents z_a, z_b: (pairs, l) -> (pairs, steps, *data_shape)."""
    import torch

    t = torch.linspace(0, 1, steps, dtype=z_a.dtype).view(1, steps, 1)
    z = (1 - t) * z_a[:, None] + t * z_b[:, None]  # (pairs, steps, l)
    with torch.no_grad():
        x = module.decode(z.reshape(-1, z.shape[-1])).float()
    return x.reshape(z_a.shape[0], steps, *x.shape[1:])


def run(args) -> int:
    import numpy as np
    import torch

    from gens import plots
    from gens._validation import check_int
    from gens.cli._output import write_outputs
    from gens.plots import as_images, image_scale
    from gens.runs import load_run, run_split

    pairs = check_int("pairs", args.pairs, minimum=1)
    steps = check_int("steps", args.steps, minimum=2)
    seed = check_int("seed", args.seed, minimum=0, maximum=2**63 - 1)
    module, cfg = load_run(args.run, args.checkpoint)
    shape = tuple(cfg["data_shape"])
    gen = torch.Generator().manual_seed(seed)
    if args.mode == "random":
        z = module.latent_distribution().sample(2 * pairs, generator=gen).float()
        x = interpolate(module, z[:pairs], z[pairs:], steps)
        ends = None
    else:
        data, _ = run_split(cfg, "test", data=getattr(args, "data", None))  # refuses data of another shape
        if len(data) < 2:
            raise ValueError("data: the test split needs at least 2 samples to pick pairs")
        idx = torch.randperm(len(data), generator=gen)[: 2 * pairs]
        if len(idx) < 2 * pairs:
            idx = torch.randint(len(data), (2 * pairs,), generator=gen)
        xa, xb = data[idx[:pairs]].float(), data[idx[pairs:]].float()
        with torch.no_grad():
            x = interpolate(module, module.encode(xa), module.encode(xb), steps)
        ends = (xa, xb)
    images = as_images(x.reshape(pairs * steps, *x.shape[2:]), shape)
    draw = None
    if images is not None:
        grid = images.reshape(pairs, steps, *images.shape[1:])
        if ends is not None:  # originals at both ends of every row
            a, b = (as_images(e, shape)[:, None] for e in ends)
            grid = np.concatenate([a, grid, b], axis=1)
        draw = lambda path: plots.interpolation_grid(grid, path, scale=image_scale(shape))
    write_outputs(args, Path(args.run) / f"interpolate-{args.mode}.png", x.numpy(), draw, "interpolations", shape)
    return 0
