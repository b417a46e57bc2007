"""``gens reconstruct RUN``: originals and their reconstructions D(E(x))."""

from __future__ import annotations

from pathlib import Path

HELP = "reconstruct data with a trained run (PNG of originals over reconstructions, MSE)"
DESCRIPTION = (
    "Encode and decode n images of the run's data (or --data) and write a PNG whose rows alternate "
    "originals and reconstructions; prints the per-pixel reconstruction MSE over the whole split."
)


def add_arguments(p) -> None:
    import argparse

    S = argparse.SUPPRESS  # no "(default: None)" in --help; read with getattr
    p.add_argument("run", metavar="RUN", help="run folder written by `gens train`")
    p.add_argument("--data", default=S, help="data source (default: the run's)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="which split")
    p.add_argument("-n", type=int, default=32, help="number of images shown")
    p.add_argument("--out", default=S, help="PNG path (default: RUN/reconstruct-<split>.png); FILE.npy: the "
                   "array goes there, the PNG beside it")
    p.add_argument("--checkpoint", default="last", choices=["last", "best"], help="which checkpoint")
    p.add_argument("--npy", action="store_true", default=S, help="also save all reconstructions of the split as .npy")


def run(args) -> int:
    import numpy as np
    import torch

    from gens import plots
    from gens._validation import check_int
    from gens.cli._output import write_outputs
    from gens.plots import as_images, image_scale
    from gens.runs import load_run, run_split

    n = check_int("n", args.n, minimum=1)
    module, cfg = load_run(args.run, args.checkpoint)
    x, _ = run_split(cfg, args.split, data=getattr(args, "data", None))  # refuses data of another shape
    shape = tuple(cfg["data_shape"])
    with torch.no_grad():
        recon = torch.cat([module.reconstruct(c).float() for c in x.split(1000)])
    mse = float(((recon - x) ** 2).mean())
    print(f"{args.split} reconstruction MSE per pixel ({len(x)} samples): {mse:.5f}")
    xi, ri = as_images(x[:n], shape), as_images(recon[:n], shape)
    draw = None
    if xi is not None:
        rows = [np.concatenate([xi[i : i + 8], ri[i : i + 8]]) for i in range(0, len(xi), 8)]
        draw = lambda path: plots.image_grid(np.concatenate(rows), path, nrow=min(8, len(xi)),
                                             scale=image_scale(shape))
    write_outputs(args, Path(args.run) / f"reconstruct-{args.split}.png", recon.numpy(), draw, "reconstructions",
                  shape)
    return 0
