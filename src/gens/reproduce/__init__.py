"""``gens reproduce``: the paper's Table 1, Table 2, Fig. 1 and Table 3 into one report folder.

    from gens.reproduce import Options, reproduce
    md, html = reproduce("table2", Options(out="report", data="mnist:/data/mnist", quick=True))

Each part lives in its own module (``table1``, ``table2``, ``fig1``, ``table3``) with a ``run(opts, units,
log) -> Section`` and the paper's values in a ``PAPER`` dict. Every finished unit (a Table 1 cell, a
trained model's measured row, a Fig. 1 cell) is saved at once under ``DIR/units`` (``store.Units``) and
reused when the command runs again, so an interrupted reproduction continues where it stopped. After
each part the report (``DIR/report.md``, ``DIR/report.html``; ``report.py``) is rewritten from every part
saved in DIR so far.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from gens._validation import check_choice, check_int

__all__ = ["PARTS", "Options", "reproduce", "resolve_data"]

PARTS = ("table1", "table2", "fig1", "table3")


@dataclass
class Options:
    """Settings of a reproduction; None means the part's faithful default (or its quick one with ``quick``).

    out: report folder. data: Table 2's data source (``mnist:DIR``; default ``$GENS_MNIST``). seeds,
    epochs, limit (first LIMIT images of each split), ns (entropy sample sizes): Table 2 / 3 trainings.
    jobs: trainings run at once (spawned processes); threads: torch threads per training.
    svhn / celeba: folders for Table 3. inception_weights: the FID Inception-v3 file (else in-domain
    features). classifier_epochs: epochs of the in-domain FID classifier. cache_dir: where the FID
    classifier and h_opt are cached (default ``$GENS_CACHE_DIR`` or ``~/.cache/gens``).
    methods: Table 2's methods (default aae vae gen ae; "wae" too). samplers: the ex-post samplers whose
    FID Table 2 measures (``gens.samplers.SAMPLERS``; default all; "analytic", the FID column, always).
    Library-only knobs for small runs: ``table3_methods``, ``module_kwargs``
    ({method: {option: value}} passed to every training of that method), ``table1`` / ``fig1`` (dicts
    overriding those parts' grids), ``fid_n``.
    """

    out: str | os.PathLike = "reproduction"
    quick: bool = False
    data: str | None = None
    seeds: list | None = None
    epochs: int | None = None
    limit: int | None = None
    ns: list | None = None
    accelerator: str = "auto"
    jobs: int = 1
    threads: int | None = None
    svhn: str | None = None
    celeba: str | None = None
    inception_weights: str | None = None
    classifier_epochs: int | None = None
    cache_dir: str | None = None
    fid_n: int = 10000
    methods: tuple | None = None
    samplers: tuple | None = None
    table3_methods: tuple | None = None
    module_kwargs: dict = field(default_factory=dict)
    table1: dict = field(default_factory=dict)
    fig1: dict = field(default_factory=dict)
    command: str | None = None
    verbose: bool = True

    def log(self, message: str) -> None:
        if self.verbose:
            print(message, flush=True)


def resolve_data(data: str | None) -> str:
    """Table 2's data source: ``data``, else ``$GENS_MNIST`` (a folder means ``mnist:FOLDER``); else ValueError."""
    data = data or os.environ.get("GENS_MNIST")
    if not data:
        raise ValueError("data: table2 trains on MNIST and gens never downloads it: pass --data mnist:DIR (the "
                         "folder holding train-images-idx3-ubyte.gz, t10k-images-idx3-ubyte.gz and the label "
                         "files) or set GENS_MNIST=DIR")
    if ":" not in data and os.path.isdir(data):
        data = f"mnist:{data}"
    from gens.data import available_splits

    if "test" not in available_splits(data):  # also checks that the path exists
        raise ValueError(f"data: {data} has no test split; Table 2 measures test latents (MNIST's t10k files)")
    return data


def _validate(what: str, opts: Options) -> tuple[str, ...]:
    what = check_choice("what", what, PARTS + ("all",))
    parts = PARTS if what == "all" else (what,)
    opts.jobs = check_int("jobs", opts.jobs, minimum=1)
    if opts.threads is not None:
        opts.threads = check_int("threads", opts.threads, minimum=1)
    if opts.epochs is not None:
        opts.epochs = check_int("epochs", opts.epochs, minimum=1)
    if opts.limit is not None:
        opts.limit = check_int("limit", opts.limit, minimum=2)
    if opts.seeds is not None:
        opts.seeds = [check_int("seeds", s, minimum=0) for s in opts.seeds]
        if not opts.seeds:
            raise ValueError("seeds: give at least one seed")
    if opts.ns is not None:
        opts.ns = sorted({check_int("ns", n, minimum=10) for n in opts.ns})
    if opts.methods is not None:
        from gens.reproduce.table2 import CHOICES

        opts.methods = tuple(dict.fromkeys(check_choice("methods", m, CHOICES) for m in opts.methods))
        if not opts.methods:
            raise ValueError("methods: give at least one method")
    if opts.samplers is not None:
        from gens.samplers import SAMPLERS

        given = {check_choice("samplers", s, SAMPLERS) for s in opts.samplers} | {"analytic"}
        opts.samplers = tuple(s for s in SAMPLERS if s in given)  # the registry's order, analytic always
    if opts.inception_weights is not None:  # the extra gens[fid] and the file, before anything trains
        from gens.evaluation.fid import check_inception

        check_inception(opts.inception_weights)
    for name in ("svhn", "celeba"):
        path = getattr(opts, name)
        if path is not None and not Path(path).exists():
            raise ValueError(f"{name}: no such file or folder {path}")
    if "table2" in parts:  # fail before anything runs, not after Table 1
        opts.data = resolve_data(opts.data)
    return parts


def reproduce(what: str, opts: Options | None = None, **kwargs) -> tuple[Path, Path]:
    """Run part ``what`` (table1, table2, fig1, table3, or all) into ``opts.out``; returns (report.md, report.html).

    Keyword arguments fill an ``Options`` when ``opts`` is None.
    """
    from gens.reproduce.report import environment, load_sections, save_section, write_report
    from gens.reproduce.store import Units

    opts = opts or Options(**kwargs)
    parts = _validate(what, opts)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(exist_ok=True)
    command = opts.command or " ".join(sys.argv)
    units = Units(out / "units")
    opts.log(f"gens reproduce {what}: report folder {out} ({'quick' if opts.quick else 'faithful'} settings)")
    paths = None
    for part in parts:
        start, before = time.perf_counter(), units.counts()
        opts.log(f"[{part}] starting")
        section = importlib.import_module(f"gens.reproduce.{part}").run(opts, units, opts.log)
        after = units.counts()
        section.command = command
        section.date = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
        section.wall_s = time.perf_counter() - start
        section.reused, section.computed = after[0] - before[0], after[1] - before[1]
        section.unit_s = after[2] - before[2]
        save_section(out, section)
        env = environment()
        env["command"] = command
        paths = write_report(out, load_sections(out, PARTS), env)
        opts.log(f"[{part}] done in {section.wall_s:.1f} s: "
                 + ("skipped" if section.skipped else f"{len(section.misses)} value(s) do not reproduce")
                 + f"; report {paths[0]}")
    return paths
