"""How the GEN's step cost grows with the bank size m, the latent dimension l and the batch (issue 7 item 6).

    python benchmarks/bench_scaling.py                 # writes benchmarks/scaling/scaling.{json,png}
    python benchmarks/bench_scaling.py --rounds 4 --out /tmp/scaling
    git show 3e4ea1c:src/gens/kde.py > /tmp/kde_old.py
    python benchmarks/bench_scaling.py --baseline-kde /tmp/kde_old.py   # adds a curve with the old KDE

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

from bench_step import build, load_mnist, make_step, ratio_stats, time_cycles, with_kde  # noqa: E402

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


def measure(setting: dict, data, rounds: int, cycle: int, baseline_kde: str | None = None) -> dict:
    """Ratio stats of GEN queue (and GEN queue with the baseline KDE) vs AE for one (m, l, batch)."""
    m, l, batch = setting["m"], setting["l"], setting["batch"]
    ae = build("ae", l)
    gen = build("gen", l, "queue", m)
    fill_bank(gen[0], data, m)
    steps = {"ae": make_step(*ae), "gen_queue": make_step(*gen)}
    if baseline_kde:
        old = build("gen", l, "queue", m)
        fill_bank(old[0], data, m)
        steps["baseline"] = with_kde(make_step(*old), baseline_kde)
    t0 = time.perf_counter()
    times = time_cycles(steps, data, batch, cycle, rounds)
    stats = ratio_stats(times)
    out = {**setting, "ae_ms": 1e3 * stats["ae"]["median_s"], "gen_ms": 1e3 * stats["gen_queue"]["median_s"],
           "ratio": stats["gen_queue"]["ratio"], "ratio_q1": stats["gen_queue"]["ratio_q1"],
           "ratio_q3": stats["gen_queue"]["ratio_q3"], "seconds": time.perf_counter() - t0}
    if baseline_kde:
        out.update(baseline_ratio=stats["baseline"]["ratio"], baseline_q1=stats["baseline"]["ratio_q1"],
                   baseline_q3=stats["baseline"]["ratio_q3"])
    return out


def plot(rows: list[dict], path: str) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4), sharey=True)
    for ax, key, label in zip(axes, ("m", "l", "batch"), ("bank size m", "latent dimension l", "batch size")):
        mine = sorted((r for r in rows if r["varied"] in (key, "base")), key=lambda r: r[key])
        x = [r[key] for r in mine]
        for pre, name in (("", "gens.kde"), ("baseline_", "pre-issue-7 kde")):
            if pre + "ratio" not in mine[0]:
                continue
            y = [r[pre + "ratio"] for r in mine]
            q1 = [r[pre + "q1" if pre else "ratio_q1"] for r in mine]
            q3 = [r[pre + "q3" if pre else "ratio_q3"] for r in mine]
            ax.errorbar(x, y, yerr=[[a - b for a, b in zip(y, q1)], [b - a for a, b in zip(y, q3)]], marker="o",
                        capsize=3, label=name, ls="-" if not pre else ":")
        ax.axhline(1.15, color="grey", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_yticks([1, 1.15, 1.5, 2, 3, 5])
        ax.set_yticklabels(["1", "1.15", "1.5", "2", "3", "5"])
        ax.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xticks(x)
        ax.set_xticklabels([f"{v:g}" for v in x])
        ax.minorticks_off()
        ax.set_xlabel(label)
        others = ", ".join(f"{k}={v:g}" for k, v in BASE.items() if k != key)
        ax.set_title(others, fontsize=9)
    axes[0].set_ylabel("GEN (queue) step / AE step")
    if "baseline_ratio" in rows[0]:
        axes[0].legend(fontsize=8)
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
    p.add_argument("--baseline-kde", help="a gens/kde.py file: also time a GEN queue step whose JSD term uses it")
    p.add_argument("--replot", action="store_true", help="only redraw scaling.png from --out's scaling.json")
    args = p.parse_args(argv)

    if args.replot:
        with open(os.path.join(args.out, "scaling.json")) as fh:
            rows = json.load(fh)["rows"]
        plot(rows, os.path.join(args.out, "scaling.png"))
        return rows

    import torch

    torch.set_num_threads(args.threads)
    data = load_mnist(60000)
    settings = [dict(BASE, varied="base")]
    for key, values in GRID.items():
        settings += [dict(BASE, **{key: v}, varied=key) for v in values if v != BASE[key]]
    print(f"threads={torch.get_num_threads()} cpus={os.cpu_count()} load average {os.getloadavg()[0]:.1f}", flush=True)
    extra = " baseline-KDE GEN/AE | quartiles |" if args.baseline_kde else ""
    print("| m | l | batch | AE ms | GEN queue ms | GEN/AE (median) | quartiles |" + extra)
    print("|---" * (7 + 2 * bool(args.baseline_kde)) + "|")
    rows = []
    for s in settings:
        varied = s.pop("varied")
        r = dict(measure(s, data, args.rounds, args.cycle, args.baseline_kde), varied=varied)
        rows.append(r)
        extra = f" {r['baseline_ratio']:.3f} | {r['baseline_q1']:.3f}-{r['baseline_q3']:.3f} |" if args.baseline_kde else ""
        print(f"| {r['m']} | {r['l']} | {r['batch']} | {r['ae_ms']:.1f} | {r['gen_ms']:.1f} | {r['ratio']:.3f} | "
              f"{r['ratio_q1']:.3f}-{r['ratio_q3']:.3f} |" + extra, flush=True)
    os.makedirs(args.out, exist_ok=True)
    meta = {"args": vars(args), "torch": torch.__version__, "load_average_end": os.getloadavg()[0]}
    with open(os.path.join(args.out, "scaling.json"), "w") as fh:
        json.dump({"meta": meta, "rows": rows}, fh, indent=1)
    plot(rows, os.path.join(args.out, "scaling.png"))
    print(f"wrote {args.out}/scaling.json and scaling.png; load average now {os.getloadavg()[0]:.1f}")
    return rows


if __name__ == "__main__":
    main()
