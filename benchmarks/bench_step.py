"""Training-step cost of a GEN against a plain AE (issue 7 item 1), as ratios measured side by side.

    python benchmarks/bench_step.py                       # MNIST, FC 784-1000-1000-8, batch 100, m = 10000
    python benchmarks/bench_step.py --rounds 40 --threads 2 --json out.json
    git show 3e4ea1c:src/gens/kde.py > /tmp/kde_old.py     # the KDE before issue 7
    python benchmarks/bench_step.py --baseline-kde /tmp/kde_old.py   # adds a GEN queue step using it

One process, torch with ``--threads`` intra-op threads (default 1, so every method sees the same
conditions on a shared machine). Three modules with the same FC network, the same initial weights and
Adam (lr 2e-4, betas (0.5, 0.999)): AE, GEN with a queue bank and GEN with a refresh bank (kb = 10), and
the ``--variants`` (default: the EMA-encoder queue and a refresh bank of m = 2000). The GENs run with the
library's default loss (the coverage term included).
No Lightning Trainer: the step is the pure loop Lightning runs,

    module.on_train_batch_start(x, i)   # GEN refresh: re-encodes the m bank samples when i % kb == 0
    opt.zero_grad(); module.losses(x)["loss"].backward(); opt.step()

on random minibatches of real MNIST training images. Timing: a *round* runs one cycle of kb steps of
each method (the order rotates every round); a cycle's wall time / kb is one per-step sample, so the
refresh method's samples include its one re-encode of m samples per cycle (amortised m/kb per step).
Ratios are medians over rounds of the per-round ratio GEN/AE (each ratio's two sides ran seconds
apart). Then the pieces of a GEN queue step and the refresh are timed one by one (medians, interleaved
too), and torch.profiler lists the most expensive operators of a GEN queue step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

MNIST = os.environ.get("GENS_MNIST", os.path.join(os.path.dirname(__file__), "..", ".data", "mnist"))


def load_mnist(n: int, seed: int = 0):
    """(n, 1, 28, 28) float32 MNIST training images, a random subset."""
    import torch

    from gens.data import load_dataset

    x, _ = load_dataset(f"idx:{MNIST}", "train")
    x = torch.from_numpy(x)
    idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    return x[idx].contiguous()


def silverman(m: int, l: int) -> float:
    """Silverman's rule for N(0, I_l): a bandwidth of the right size where h_opt is not cached (timing only)."""
    return (4.0 / (l + 2)) ** (1.0 / (l + 4)) * m ** (-1.0 / (l + 4))


def build(method: str, latent_dim: int, bank_mode: str = "queue", m: int = 10000, kb: int = 10,
          bandwidth: float | None = None, seed: int = 0, draws: int = 1):
    """(module, Adam optimiser) with the FC 784-1000-1000-l net; a GEN gets bank samples set but no bank yet."""
    import torch

    from gens.methods import build_module

    torch.manual_seed(seed)  # every method starts from the same weights
    kw = {}
    if method == "gen":
        h = bandwidth if bandwidth is not None else silverman(m, latent_dim)
        kw = dict(bank_mode=bank_mode, bank_size=m, refresh_every=kb, bandwidth=h, coverage_draws=draws)
    module = build_module(method, [1, 28, 28], latent_dim, arch="fc", **kw)
    module.train()
    return module, module.configure_optimizers()


def prime_bank(module, bank_x) -> None:
    """What GENModule.on_train_start does without a Trainer: the bank strategy's set-up on the m samples
    (their first encoding; the EMA queue's moving copy of the encoder), batch counter 0."""
    module._batches = 0
    module.bank_strategy.setup(module, len(bank_x), (len(bank_x), lambda idx: bank_x[idx]))


def parse_variant(spec: str, m: int, kb: int) -> tuple[str, str, int, int, int]:
    """``MODE[:m=M,kb=K,draws=D]`` -> (name, bank mode, m, kb, coverage draws); e.g. ``refresh:m=2000`` ->
    ("gen_refresh_m2000", "refresh", 2000, kb, 1)."""
    mode, _, rest = spec.partition(":")
    opts = dict(kv.split("=") for kv in rest.split(",") if kv)
    bad = set(opts) - {"m", "kb", "draws"}
    if bad:
        raise SystemExit(f"--variants: {spec!r}: only m=, kb= and draws= may be set, got {sorted(bad)}")
    name = "gen_" + mode.replace("-", "_") + "".join(f"_{k}{v}" for k, v in opts.items())
    return name, mode, int(opts.get("m", m)), int(opts.get("kb", kb)), int(opts.get("draws", 1))


def make_step(module, opt):
    """One training step exactly as Lightning's automatic optimisation runs it (without the Trainer)."""
    state = {"i": 0}

    def step(x):
        module.on_train_batch_start(x, state["i"])
        state["i"] += 1
        opt.zero_grad(set_to_none=True)
        module.losses(x)["loss"].backward()
        opt.step()

    return step


def with_kde(step, path: str):
    """``step`` run with gens.divergence using ``kde_log_density`` from the file ``path`` (an older gens.kde)."""
    import importlib.util

    import gens.divergence as div

    spec = importlib.util.spec_from_file_location("baseline_kde", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    def wrapped(x):
        current, div.kde_log_density = div.kde_log_density, mod.kde_log_density
        try:
            step(x)
        finally:
            div.kde_log_density = current

    return wrapped


def batches(data, batch: int, seed: int = 1):
    """Endless random minibatches (batch, 1, 28, 28) of data."""
    import torch

    g = torch.Generator().manual_seed(seed)
    while True:
        for idx in torch.randperm(data.shape[0], generator=g).split(batch):
            if idx.numel() == batch:
                yield data[idx]


def time_cycles(steps: dict, data, batch: int, kb: int, rounds: int, warmup: int = 1) -> dict:
    """{name: [seconds per step of each round]}: each round runs kb steps of every method, order rotating."""
    names = list(steps)
    it = batches(data, batch)
    out = {k: [] for k in names}
    for r in range(warmup + rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            xs = [next(it) for _ in range(kb)]
            t0 = time.perf_counter()
            for x in xs:
                steps[name](x)
            dt = (time.perf_counter() - t0) / kb
            if r >= warmup:
                out[name].append(dt)
    return out


def ratio_stats(times: dict, base: str = "ae") -> dict:
    """Median per-step time of each method and the median / quartiles of its per-round ratio to ``base``."""
    res = {}
    for k, v in times.items():
        r = sorted(a / b for a, b in zip(v, times[base]))
        q = statistics.quantiles(r, n=4) if len(r) > 1 else [r[0]] * 3
        res[k] = {"median_s": statistics.median(v), "ratio": statistics.median(r), "ratio_q1": q[0],
                  "ratio_q3": q[2]}
    return res


def _timeit(fn, reps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def components(gen_q, gen_r, ae, data, batch: int, reps: int, rounds: int) -> dict:
    """Median seconds of the pieces of a GEN queue step and of one refresh (interleaved rounds)."""
    import torch

    from gens.divergence import gen_jsd_term

    mod, _ = gen_q
    x = next(batches(data, batch, seed=2))
    bank = mod.bank.latents()
    h = float(mod.bandwidth_h)

    def enc_fwd():
        mod.encode(x)

    def dec_fwd_recon():
        z = mod.encode(x).detach()
        mod.recon_loss(x, mod.decode(z))

    def ae_fwd_bwd():  # recon only: encoder + decoder forward and backward
        mod.zero_grad(set_to_none=True)
        z = mod.encode(x)
        mod.recon_loss(x, mod.decode(z)).backward()

    zq = mod.encode(x).detach()

    def kde_fwd():
        with torch.no_grad():
            gen_jsd_term(zq, bank, mod.target, h, form=mod.objective)

    def kde_fwd_bwd():
        z = zq.clone().requires_grad_(True)
        gen_jsd_term(z, bank, mod.target, h, form=mod.objective).backward()

    def jsd_term_module():  # the module's own path: checks, bank fetch, the term (forward only)
        with torch.no_grad():
            mod.jsd_term(zq)

    saved = bank.clone()

    def push():
        mod.bank.push(zq)

    opt = torch.optim.Adam(mod.parameters(), lr=2e-4, betas=(0.5, 0.999))
    ae_fwd_bwd()

    def adam():
        opt.step()

    rmod = gen_r[0]

    def refresh():
        rmod.refresh_bank()

    amod, aopt = ae
    astep = make_step(amod, aopt)

    def ae_step():
        astep(x)

    parts = {"AE full step": ae_step, "encoder fwd": enc_fwd, "decoder fwd + recon loss": dec_fwd_recon,
             "enc+dec fwd+bwd (recon only)": ae_fwd_bwd, "Adam step": adam, "JSD term fwd (KDE + target)": kde_fwd,
             "JSD term fwd+bwd": kde_fwd_bwd, "module.jsd_term fwd (with checks)": jsd_term_module,
             "bank push": push, "refresh (m re-encodes)": refresh}
    res = {k: [] for k in parts}
    for _ in range(rounds):
        for k, fn in parts.items():
            n = 1 if k.startswith("refresh") else reps
            res[k].append(_timeit(fn, n))
    mod.bank.fill(saved)
    return {k: statistics.median(v) for k, v in res.items()}


def profile_step(step, data, batch: int, n: int = 20, top: int = 15) -> str:
    """torch.profiler table (self CPU time) of n GEN queue steps."""
    from torch.profiler import ProfilerActivity, profile

    it = batches(data, batch, seed=3)
    for _ in range(3):
        step(next(it))
    xs = [next(it) for _ in range(n)]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for x in xs:
            step(x)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=48)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--latent-dim", type=int, default=8)
    p.add_argument("--bank-size", type=int, default=10000)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--kb", type=int, default=10, help="refresh every kb steps (GEN refresh)")
    p.add_argument("--bandwidth", type=float, default=0.534, help="h (default: h_opt for l=8, m=10000)")
    p.add_argument("--rounds", type=int, default=30, help="timed rounds (kb steps of every method each)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--no-components", action="store_true", help="skip the per-piece timings")
    p.add_argument("--no-profile", action="store_true", help="skip the torch.profiler table")
    p.add_argument("--variants", nargs="*", default=["ema-queue", "refresh:m=2000"],
                   help="more GEN banks timed beside queue and refresh: MODE[:m=M,kb=K,draws=D] (M <= --bank-size; "
                        "D: coverage_draws)")
    p.add_argument("--baseline-kde", help="a gens/kde.py file: also time a GEN queue step whose JSD term uses it")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    l, m, kb = args.latent_dim, args.bank_size, args.kb
    data = load_mnist(max(m, 20000))
    bank_x = data[:m]
    print(f"MNIST FC 784-1000-1000-{l}, batch {args.batch}, m={m}, kb={kb}, h={args.bandwidth}, "
          f"torch {torch.__version__} threads={torch.get_num_threads()}, cpus={os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    ae = build("ae", l)
    gen_q = build("gen", l, "queue", m, kb, args.bandwidth)
    gen_r = build("gen", l, "refresh", m, kb, args.bandwidth)
    prime_bank(gen_q[0], bank_x)
    prime_bank(gen_r[0], bank_x)
    steps = {"ae": make_step(*ae), "gen_queue": make_step(*gen_q), "gen_refresh": make_step(*gen_r)}
    for spec in args.variants:
        name, mode, vm, vkb, draws = parse_variant(spec, m, kb)
        module = build("gen", l, mode, vm, vkb, args.bandwidth if vm == m else silverman(vm, l), draws=draws)
        prime_bank(module[0], bank_x[:vm])
        steps[name] = make_step(*module)
    if args.baseline_kde:
        gen_b = build("gen", l, "queue", m, kb, args.bandwidth)
        prime_bank(gen_b[0], bank_x)
        steps["gen_queue_baseline_kde"] = with_kde(make_step(*gen_b), args.baseline_kde)
    t0 = time.perf_counter()
    times = time_cycles(steps, data, args.batch, kb, args.rounds)
    stats = ratio_stats(times)
    print(f"\nstep time, median of {args.rounds} rounds of {kb} steps each ({time.perf_counter() - t0:.0f} s; "
          f"load average now {os.getloadavg()[0]:.1f})")
    print("| method | median ms/step | ratio to AE (median of per-round ratios) | IQR |")
    print("|---|---|---|---|")
    for k, s in stats.items():
        print(f"| {k} | {1e3 * s['median_s']:.1f} | {s['ratio']:.3f} | {s['ratio_q1']:.3f}-{s['ratio_q3']:.3f} |")
    result = {"args": vars(args), "load_average": os.getloadavg()[0], "steps": stats, "raw": times}

    if not args.no_components:
        comp = components(gen_q, gen_r, ae, data, args.batch, reps=10, rounds=max(5, args.rounds // 3))
        base = comp["AE full step"]
        print("\npieces (median s over interleaved rounds; share = / AE full step)")
        print("| piece | ms | / AE step |")
        print("|---|---|---|")
        for k, v in comp.items():
            print(f"| {k} | {1e3 * v:.2f} | {v / base:.3f} |")
        floor = 1 + comp["refresh (m re-encodes)"] / kb / base
        print(f"refresh amortised over kb={kb} steps: {comp['refresh (m re-encodes)'] / kb / base:.3f} AE steps "
              f"-> a refresh-mode floor of {floor:.2f}x with a free JSD term")
        result["components"] = comp
    if not args.no_profile:
        table = profile_step(steps["gen_queue"], data, args.batch)
        print("\ntorch.profiler, 20 GEN queue steps, by self CPU time:\n" + table)
        result["profile"] = table
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
