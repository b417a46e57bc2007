"""Time eq.-10 novelty scoring of MNIST-sized images: forward-mode Jacobians vs a reverse-mode baseline.

The paper's FC pair (784-1000-1000-8 encoder, 8-1000-1000-784 decoder) with random weights (timing does
not depend on training). Three timings:

1. ``decoder_log_det`` on n codes (forward mode: l = 8 JVPs per chunk, vmapped);
2. the same log-determinant from a reverse-mode Jacobian (torch.autograd.functional.jacobian,
   vectorize=True, of the batch-summed output: d = 784 VJPs per chunk), on baseline_n codes and
   scaled to n;
3. the whole ``novelty_log_prob`` (encode, decode, Jacobian, log-det, noise term) on n images.

    python benchmarks/bench_novelty.py --n 10000 --baseline-n 2000
"""

from __future__ import annotations

import argparse
import time

import torch

from gens.evaluation.novelty import decoder_log_det, novelty_log_prob
from gens.networks import MLPDecoder, MLPEncoder


def reverse_mode_log_det(decoder, z: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """1/2 log det(J^T J) with J from reverse mode: d VJPs per chunk. z: (n, l) -> (n,)."""
    out = []
    for start in range(0, len(z), chunk_size):
        zc = z[start:start + chunk_size]
        # rows are independent, so d/dz of the batch sum gives every sample's Jacobian: (d, c, l)
        jac = torch.autograd.functional.jacobian(
            lambda v: decoder(v).reshape(len(v), -1).sum(0), zc, vectorize=True)
        jac = jac.permute(1, 0, 2).double()
        out.append(0.5 * torch.linalg.slogdet(jac.mT @ jac).logabsdet)
    return torch.cat(out)


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10000, help="images / codes to score")
    parser.add_argument("--baseline-n", type=int, default=2000, help="codes for the reverse-mode baseline")
    parser.add_argument("--latent-dim", type=int, default=8)
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = (1, 28, 28)
    encoder = MLPEncoder(shape, args.latent_dim).to(args.device).eval()
    decoder = MLPDecoder(shape, args.latent_dim).to(args.device).eval()
    z = torch.randn(args.n, args.latent_dim, device=args.device)
    x = torch.rand(args.n, *shape, device=args.device)

    decoder_log_det(decoder, z[:8])  # one-time torch.func set-up (imports), not counted
    fwd, t_fwd = timed(lambda: decoder_log_det(decoder, z, args.chunk_size))
    nb = min(args.baseline_n, args.n)
    rev, t_rev = timed(lambda: reverse_mode_log_det(decoder, z[:nb], args.chunk_size))
    gap = float((fwd[:nb].cpu() - rev.cpu()).abs().max())
    t_rev_n = t_rev * args.n / nb
    _, t_all = timed(lambda: novelty_log_prob(encoder, decoder, lambda v: -0.5 * (v**2).sum(1), x, 0.02,
                                              args.chunk_size))
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, l = {args.latent_dim}, "
          f"chunk {args.chunk_size}")
    print(f"forward-mode log-det, {args.n} codes:   {t_fwd:8.2f} s")
    print(f"reverse-mode log-det, {nb} codes:   {t_rev:8.2f} s  -> {t_rev_n:.2f} s for {args.n} (scaled)")
    print(f"ratio reverse / forward:               {t_rev_n / t_fwd:8.1f}x  (max |difference| {gap:.2e})")
    print(f"novelty_log_prob (eq. 10), {args.n} images: {t_all:8.2f} s")


if __name__ == "__main__":
    main()
