"""Table 3: FID of AAE, VAE and GEN samples on SVHN (l = 25) and CelebA (l = 40), from the user's files.

Nothing is downloaded: ``--svhn DIR`` (``train_32x32.mat``, ``test_32x32.mat``) and ``--celeba DIR`` (a
folder of images, centre-cropped and resized to 64x64 by ``gens.data``) point at them; a data set not given
is skipped with a note. Each (data set, method, seed) is one unit (``measure.train_and_measure``) with the
method's defaults (``arch="auto"``: the convolutional networks for colour images of 32 pixels and more).
FID: with ``--inception-weights`` the standard Inception-v3 features (then compared with the paper: ✓ when
|mean - paper| <= paper sd + our sd); otherwise in-domain features where the data have labels (SVHN, not
comparable with the paper's numbers) and no FID where they do not (CelebA).
"""

from __future__ import annotations

from pathlib import Path

from gens.reproduce.measure import budget, budget_text, method_defaults, run_jobs, weight_average
from gens.reproduce.report import Section, cell, fmt_pm
from gens.reproduce.table2 import agrees, fid_config, quick_classifier_epochs

__all__ = ["PAPER", "DATASETS", "QUICK", "run"]

# The paper's Table 3: PAPER[data][method] = (mean, sd)
PAPER = {
    "svhn": {"aae": (56.08, 0.35), "vae": (55.21, 0.24), "gen": (45.52, 0.33)},
    "celeba": {"aae": (52.65, 0.06), "vae": (55.51, 0.25), "gen": (43.65, 0.09)},
}
DATASETS = {
    "svhn": {"name": "SVHN", "latent_dim": 25, "scheme": "svhn", "option": "--svhn DIR",
             "files": "train_32x32.mat and test_32x32.mat"},
    "celeba": {"name": "CelebA", "latent_dim": 40, "scheme": "images", "option": "--celeba DIR",
               "files": "the aligned face images (.jpg/.png), any folder layout"},
}
METHODS = ("aae", "vae", "gen")
NAMES = {"aae": "AAE", "vae": "VAE", "gen": "GEN", "ae": "AE", "wae": "WAE"}
QUICK = dict(limit=10000, epochs=2, seeds=[0], methods=("gen",))


def run(opts, units, log) -> Section:
    import torch

    from gens.data import load_dataset

    sec = Section("table3", "Table 3: FID on SVHN and CelebA")
    given = {k: getattr(opts, k) for k in DATASETS if getattr(opts, k)}
    if not given:
        sec.skipped = True
        sec.text("**Skipped**: no data given. Table 3 needs the user's files (nothing is downloaded): "
                 + "; ".join(f"`{d['option']}` ({d['files']})" for d in DATASETS.values())
                 + ". `--inception-weights pt_inception-2015-12-05-6726825d.pth` makes the FIDs comparable with "
                 "the paper's.")
        return sec
    quick = QUICK if opts.quick else {}
    methods = list(opts.table3_methods or quick.get("methods") or METHODS)
    seeds = list(opts.seeds or quick.get("seeds") or [0, 1, 2])
    limits = budget(opts.epochs or quick.get("epochs"))  # {"epochs": E} or DEFAULT_STEPS steps
    limit = opts.limit or quick.get("limit")
    threads = opts.threads or (max(1, torch.get_num_threads() // opts.jobs) if opts.jobs > 1 else None)
    mode = "quick (`--quick`)" if opts.quick else "faithful defaults"
    sec.text(f"Settings ({mode}): methods {[NAMES[m] for m in methods]}, seeds {seeds}, {budget_text(limits)}, batch 100"
             + (f", first {limit} images of each split" if limit else "") + "; each method's constructor defaults "
             "(`arch='auto'`: convolutional networks for these colour images). FID of min(10000, test size) "
             "samples against as many test images (CelebA: the 10% validation split).")
    results, fid_texts = {}, {}
    for key in DATASETS:
        if key not in given:
            continue
        d = DATASETS[key]
        source = f"{d['scheme']}:{given[key]}"
        _, labels = load_dataset(source, "train", limit=2)
        epochs_c = opts.classifier_epochs or (quick_classifier_epochs(source, limit) if opts.quick and labels
                                              is not None else None)
        s = {"data": source, "fid_n": opts.fid_n, "classifier_epochs": epochs_c, "limit": limit}
        if opts.inception_weights or labels is not None:
            fid, fid_texts[key] = fid_config(opts, s, log, "table3")
        else:
            fid, fid_texts[key] = None, ("none: the images have no labels to train in-domain features on; pass "
                                         "`--inception-weights FILE` for an FID")
        base = {"data": source, **limits, "limit": limit, "ns": [], "latent_dim": d["latent_dim"],
                "batch_size": 100}
        fid_key = None if fid is None else {k: v for k, v in fid.items() if k != "cache_dir"}
        jobs = []
        for method in methods:
            kwargs = dict(opts.module_kwargs.get(method, {}))
            for seed in seeds:
                # the method's weight_average (resolved: in the unit key, so a changed default recomputes)
                ukey = {**base, "weight_average": weight_average(method, kwargs.get("weight_average")), "method": method,
                        "seed": seed, "defaults": method_defaults(method), "kwargs": kwargs, "fid": fid_key}
                name = f"{key}-{method}-seed{seed}"
                row = units.load("table3", name, ukey)
                if row is not None:
                    log(f"[table3] {name}: reused")
                    results[key, method, seed] = row
                    continue
                png = Path(opts.out) / "figures" / f"table3_{key}_{method}_s{seed}.png"
                jobs.append({**base, "weight_average": ukey["weight_average"], "method": method, "seed": seed,
                             "kwargs": kwargs, "fid": fid, "accelerator": opts.accelerator, "threads": threads, "samples_png": str(png),
                             "label": f"{key} {method} seed {seed}", "progress": opts.verbose, "_key": ukey,
                             "_name": name, "_data": key})

        def done(job, row):
            results[job["_data"], job["method"], job["seed"]] = row
            if row["status"] != "error":
                units.save("table3", job["_name"], job["_key"], row, row.get("seconds", 0.0))
            log(f"[table3] {job['_name']}: {row['status']}, recon {row.get('recon', float('nan')):.4f}, FID "
                f"{row.get('fid', float('nan')):.2f} {row.get('message', '')}")

        if jobs:
            log(f"[table3] training {len(jobs)} model(s) on {source}")
        run_jobs(jobs, opts.jobs, done)
    _report(sec, given, methods, seeds, results, fid_texts, opts)
    return sec


def _report(sec, given, methods, seeds, results, fid_texts, opts):
    inception = bool(opts.inception_weights)
    rows = []
    for key, d in DATASETS.items():
        if key not in given:
            rows.append([d["name"], f"skipped: pass `{d['option']}` ({d['files']})", "-", "-", "-"])
            continue
        for method in methods:
            ok_rows = [results[key, method, s] for s in seeds if (key, method, s) in results
                       and results[key, method, s]["status"] == "ok"]
            failed = [f"seed {s}: {results[key, method, s]['status']}" for s in seeds if (key, method, s) in results
                      and results[key, method, s]["status"] != "ok"]
            if failed:
                sec.miss(f"{d['name']} {NAMES[method]}: training failed ({'; '.join(failed)})")
            fids = [r.get("fid") for r in ok_rows if r.get("fid") is not None]
            paper = PAPER[key].get(method)
            ok = agrees(fids, paper) if inception else None
            if ok is False:
                sec.miss(f"{d['name']} {NAMES[method]} FID {fmt_pm(fids, 2)} vs the paper's {paper[0]} ± {paper[1]}")
            rows.append([f"{d['name']} (l = {d['latent_dim']}) {NAMES[method]}", cell(fmt_pm(fids, 2), ok),
                         "-" if paper is None else f"{paper[0]:.2f} ± {paper[1]:.2f}",
                         fmt_pm([r.get("recon") for r in ok_rows], 4), str(len(ok_rows))])
    sec.table(["data / method", "FID (measured)", "FID (paper)", "test recon MSE", "seeds"],
              rows, caption="✓/✗ only with the Inception features (`--inception-weights`): other features give "
              "numbers on another scale.")
    for key in given:
        sec.text(f"{DATASETS[key]['name']} FID features: {fid_texts.get(key, '-')}.")
    for key in given:
        for method in methods:
            png = Path("figures") / f"table3_{key}_{method}_s{seeds[0]}.png"
            if (Path(opts.out) / png).is_file():
                sec.figure(png, f"{DATASETS[key]['name']} {NAMES[method]}: 64 samples (seed {seeds[0]}).")
