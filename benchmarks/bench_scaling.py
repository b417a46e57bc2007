"""How the GEN's step cost grows with the bank size m, the latent dimension l and the batch (issue 7 item 6).

    python benchmarks/bench_scaling.py                 # writes benchmarks/scaling/scaling.{json,png}
    python benchmarks/bench_scaling.py --rounds 4 --out /tmp/scaling

One factor at a time around m = 10^4, l = 8, batch 100: m in {10^3, 10^4, 10^5}, l in {8, 32, 128},
batch in {100, 500}. For each setting an AE and a GEN (queue bank) with the same FC 784-1000-1000-l
net, initial weights and Adam run interleaved cycles of steps on real MNIST minibatches (see
bench_step.py, whose pure Lightning-free step this reuses); the plotted number is the median over
rounds of the per-round ratio GEN step / AE step. torch runs with --threads (default 1).
The bandwidth is Silverman's rule for N(0, I_l) (the step's cost does not depend on h). A bank larger
than the 60000 MNIST training images (m = 10^5) is filled with their encodings repeated.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_step import build, load_mnist, make_step, ratio_stats, time_cycles  # noqa: E402

BASE = {"m": 10000, "l": 8, "batch": 100}
GRID = {"m": [1000, 10000, 100000], "l": [8, 32, 128], "batch": [100, 500]}
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scaling")


def fill_bank(module, data, m: int) -> None:
    """The queue bank's first m latents: encodings of the data, repeated cyclically when m > len(data)."""
    import torch

    with torch.no_grad():
        z = torch.cat([module.encoder(c) for c in data[:m].split(4096)])
    reps = -(-m // z.shape[0])
    module.bank.fill(z.repeat(reps, 1)[:m])
    module._batches = 0


def measure(setting: dict, data, rounds: int, cycle: int) -> dict:
    """Ratio stats of GEN queue vs AE for one (m, l, batch)."""
    m, l, batch = setting["m"], setting["l"], setting["batch"]
    ae = build("ae", l)
    gen = build("gen", l, "queue", m)
    fill_bank(gen[0], data, m)
    steps = {"ae": make_step(*ae), "gen_queue": make_step(*gen)}
    t0 = time.perf_counter()
    times = time_cycles(steps, data, batch, cycle, rounds)
    stats = ratio_stats(times)
    return {**setting, "ae_ms": 1e3 * stats["ae"]["median_s"], "gen_ms": 1e3 * stats["gen_queue"]["median_s"],
            "ratio": stats["gen_queue"]["ratio"], "ratio_q1": stats["gen_queue"]["ratio_q1"],
            "ratio_q3": stats["gen_queue"]["ratio_q3"], "seconds": time.perf_counter() - t0}


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4), sharey=True)
    for ax, key, label in zip(axes, ("m", "l", "batch"), ("bank size m", "latent dimension l", "batch size")):
        pts = sorted((r[key], r["ratio"], r["ratio_q1"], r["ratio_q3"]) for r in rows if r["varied"] in (key, "base"))
        x = [p[0] for p in pts]
        y = [p[1] for p in pts]
        err = [[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3)
        ax.axhline(1.15, color="grey", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_xticks(x)
        ax.set_xticklabels([f"{v:g}" for v in x])
        ax.minorticks_off()
        ax.set_xlabel(label)
        others = ", ".join(f"{k}={v:g}" for k, v in BASE.items() if k != key)
        ax.set_title(others, fontsize=9)
    axes[0].set_ylabel("GEN (queue) step / AE step")
    fig.suptitle("GEN step cost relative to an AE step (MNIST FC net, CPU, 1 thread; bars: quartiles; dashed: 1.15)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=8, help="timed rounds per setting")
    p.add_argument("--cycle", type=int, default=5, help="steps of each method per round")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=OUT, help="folder for scaling.json and scaling.png")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    data = load_mnist(60000)
    settings = [dict(BASE, varied="base")]
    for key, values in GRID.items():
        settings += [dict(BASE, **{key: v}, varied=key) for v in values if v != BASE[key]]
    print(f"threads={torch.get_num_threads()} cpus={os.cpu_count()} load average {os.getloadavg()[0]:.1f}", flush=True)
    print("| m | l | batch | AE ms | GEN queue ms | GEN/AE (median) | quartiles |\n|---|---|---|---|---|---|---|")
    rows = []
    for s in settings:
        varied = s.pop("varied")
        r = dict(measure(s, data, args.rounds, args.cycle), varied=varied)
        rows.append(r)
        print(f"| {r['m']} | {r['l']} | {r['batch']} | {r['ae_ms']:.1f} | {r['gen_ms']:.1f} | {r['ratio']:.3f} | "
              f"{r['ratio_q1']:.3f}-{r['ratio_q3']:.3f} |", flush=True)
    os.makedirs(args.out, exist_ok=True)
    meta = {"args": vars(args), "torch": torch.__version__, "load_average_end": os.getloadavg()[0]}
    with open(os.path.join(args.out, "scaling.json"), "w") as fh:
        json.dump({"meta": meta, "rows": rows}, fh, indent=1)
    plot(rows, os.path.join(args.out, "scaling.png"))
    print(f"wrote {args.out}/scaling.json and scaling.png; load average now {os.getloadavg()[0]:.1f}")
    return rows


if __name__ == "__main__":
    main()
