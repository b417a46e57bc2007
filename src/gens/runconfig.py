"""The configuration of a run: every option with its default, resolved and checked before anything runs.

``resolve_config(options)`` fills in the defaults and validates every option (one ``ValueError`` line naming
it); ``gens.runs`` re-exports everything here. Beyond types and ranges it refuses what would only fail (or
silently do something else) later: a fixed ``bandwidth`` >= 1 (no shrunk target, Sec. 4), ``bandwidth`` with
``bandwidth_scale`` or ``bandwidth_correction`` (which only change h_opt, so a fixed h ignores them), and
``devices`` 0. A relative data path is made absolute, so the run can be read from any folder.
"""

from __future__ import annotations

import os

from gens import config as C
from gens._validation import check_choice, check_float, check_int

__all__ = [
    "DEFAULTS",
    "METHOD_DEFAULTS",
    "RESUME_OPTIONS",
    "RUN_FIELDS",
    "RUN_OPTIONS",
    "module_kwargs",
    "resolve_config",
    "target_spec",
    "too_wide",
]


def _run_fields() -> dict:
    """run option -> ``gens.config`` metadata (+ ``methods``: method -> its default, for module options), in the
    order of config.json: method, data, training options, module options (every method's), run options."""
    run, train = C.options(C.RunConfig), C.options(C.TrainConfig)
    fields = {"method": run["method"], "data": run["data"]}
    fields.update({m["run_name"]: m for m in train.values()})
    fields["seed"] = run["seed"]
    for method, config in C.METHOD_CONFIGS.items():
        for m in C.options(config).values():
            if m["cli"]:
                entry = fields.setdefault(m["run_name"], {**m, "methods": {}})
                entry["methods"][method] = m["default"]
    fields.update({m["run_name"]: m for k, m in run.items() if k not in fields})
    return fields


# Every option of a run (gens.config), with its default (None: decided by the method, or unset).
RUN_FIELDS = _run_fields()
# the module options' defaults per method (from gens.config; JSON types: tuples -> lists)
METHOD_DEFAULTS = {opt: {meth: list(v) if isinstance(v, tuple) else v for meth, v in m["methods"].items()}
                   for opt, m in RUN_FIELDS.items() if "methods" in m}


def _default(opt: str):
    """An option's default; a module option's when every method that takes it agrees, else None."""
    if opt not in METHOD_DEFAULTS:
        return RUN_FIELDS[opt]["default"]
    values = list(METHOD_DEFAULTS[opt].values())
    return values[0] if all(v == values[0] for v in values) else None


DEFAULTS = {opt: _default(opt) for opt in RUN_FIELDS}
# Options that may change when a run is resumed (the rest must match the saved config).
RESUME_OPTIONS = ("epochs", "steps", "accelerator", "devices", "num_nodes", "strategy", "checkpoint_every")
RUN_OPTIONS = tuple(DEFAULTS)

# run option -> module keyword (for the methods whose constructor takes it)
_MODULE_KEYS = {opt: m["name"] for opt, m in RUN_FIELDS.items() if "methods" in m}


def resolve_config(options: dict) -> dict:
    """Fill defaults into ``options`` (run option -> value; None or missing = default) and validate.

    Options the chosen method does not take (``lam`` for the AE, ``bank_size`` for the VAE, ...) raise a
    ValueError when given explicitly and are dropped when left at their default.
    """
    from gens.methods import METHODS, method_parameters

    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"{unknown[0]}: is not a run option; options: {', '.join(DEFAULTS)}")
    given = {k: v for k, v in options.items() if v is not None}
    cfg = {**DEFAULTS, **given}
    cfg["method"] = check_choice("method", cfg["method"], METHODS)
    cfg["data"] = absolute_source(cfg["data"])
    cfg["latent_dim"] = check_int("latent_dim", cfg["latent_dim"], minimum=1)
    if cfg["epochs"] is None and cfg["steps"] is None:
        cfg["steps"] = C.DEFAULT_STEPS  # the budget rule of gens.training.budget
    for opt in ("epochs", "steps"):
        if cfg[opt] is not None:
            cfg[opt] = check_int(opt, cfg[opt], minimum=1)
    cfg["batch_size"] = check_int("batch_size", cfg["batch_size"], minimum=1)
    # None: the method's default (gens.config.WEIGHT_AVERAGE); config.json records the resolved number
    cfg["weight_average"] = C.resolve_weight_average(cfg["weight_average"], cfg["method"])
    cfg["seed"] = check_int("seed", cfg["seed"], minimum=0, maximum=2**32 - 1)
    cfg["lr"] = check_float("lr", cfg["lr"], minimum=0.0, min_inclusive=False)
    cfg["val_fraction"] = check_float("val_fraction", cfg["val_fraction"], 0.0, 1.0, max_inclusive=False)
    cfg["checkpoint_every"] = check_int("checkpoint_every", cfg["checkpoint_every"], minimum=0)
    if cfg["limit"] is not None:
        cfg["limit"] = check_int("limit", cfg["limit"], minimum=2)
    cfg["num_nodes"] = check_int("num_nodes", cfg["num_nodes"], minimum=1)
    cfg["devices"] = _check_devices(cfg["devices"])
    cfg["hidden"] = [check_int("hidden", h, minimum=1) for h in _as_list(cfg["hidden"])]
    target_spec(cfg["target"], cfg["latent_dim"])  # validates the target string
    accepted = set(method_parameters(cfg["method"]))
    for opt, key in _MODULE_KEYS.items():
        if key not in accepted:
            if opt in given and given[opt] != DEFAULTS[opt]:
                raise ValueError(f"{opt}: is not an option of method {cfg['method']!r}")
            cfg[opt] = None
        elif cfg[opt] is None and not (opt == "bandwidth_scale" and cfg.get("bandwidth") is not None):
            cfg[opt] = METHOD_DEFAULTS[opt].get(cfg["method"])  # the method's own default (gens.config)
    if "target_spec" not in accepted:
        if "target" in given and given["target"] != DEFAULTS["target"]:
            raise ValueError(f"target: method {cfg['method']!r} has no target (its prior is N(0, I))")
        cfg["target"] = None
    if cfg.get("bandwidth") is not None:
        fixed = [f"--{o.replace('_', '-')}" for o in ("bandwidth_scale", "bandwidth_correction") if given.get(o)]
        if fixed:
            raise ValueError(f"bandwidth: a fixed --bandwidth is used as given, so {' and '.join(fixed)} would be "
                             "ignored (only h_opt is scaled or corrected); give one or the other")
        cfg["bandwidth"] = check_float("bandwidth", cfg["bandwidth"], minimum=0.0, min_inclusive=False)
        if cfg["bandwidth"] >= 1:
            raise ValueError(too_wide(cfg["bandwidth"], cfg["latent_dim"]))
    return cfg


def too_wide(h: float, latent_dim: int, m: int | None = None) -> str:
    """The message for a kernel bandwidth h >= 1 (or one the target cannot be shrunk by)."""
    where = f"l = {latent_dim}" + (f", m = {m}" if m is not None else "")
    return (f"bandwidth: h = {h:.4g} ({where}) must be < 1: a kernel as wide as the target leaves no shrunk target "
            "(Sec. 4) to sample from; use a larger --bank-size, a smaller --latent-dim, --bandwidth-correction or a "
            "smaller --bandwidth(-scale)")


def absolute_source(data) -> str:
    """A data source with its path made absolute ('digits' and absolute paths stay as they are)."""
    from gens.data.loaders import SCHEMES

    text = str(data).strip()
    if text.lower() == "digits" or not text:
        return text
    scheme, sep, rest = text.partition(":")
    if sep and scheme.lower() in SCHEMES:
        return f"{scheme}:{os.path.abspath(os.path.expanduser(rest))}" if rest else text
    return os.path.abspath(os.path.expanduser(text))


def _check_devices(devices):
    """'auto', N >= 1, -1 (all), or a list of device indices ([0, 1] or '0,1')."""
    text = str(devices).strip()
    if text == "auto":
        return "auto"
    if isinstance(devices, (list, tuple)):
        ok, out = all(isinstance(d, int) and d >= 0 for d in devices) and len(devices) > 0, list(devices)
    elif text.lstrip("-").isdigit() and not isinstance(devices, bool):
        out = int(text)
        ok = out >= 1 or out == -1
    else:
        out, ok = text, bool(text.strip(",")) and all(p.strip().isdigit() for p in text.strip(",").split(","))
    if not ok:
        raise ValueError(f"devices: must be 'auto', a number >= 1, -1 (all) or device indices like 0,1; "
                         f"got {devices!r}")
    return out


def _as_list(v):
    if isinstance(v, str):
        return [int(s) for s in v.replace(",", " ").split()]
    return list(v) if isinstance(v, (list, tuple)) else [v]


def target_spec(target: str | None, latent_dim: int) -> dict | None:
    """The spec dict of a target string (``gens.targets.parse_target``'s grammar: normal | mog:K | mog:K:SCALE);
    None -> None."""
    from gens.targets import parse_target  # imports torch: called when a run is resolved, not for --help

    return parse_target(target, latent_dim)


def module_kwargs(cfg: dict) -> dict:
    """The keyword arguments of ``gens.methods.build_module`` for a resolved config."""
    kw = {_MODULE_KEYS[o]: cfg[o] for o in _MODULE_KEYS if cfg.get(o) is not None}
    if cfg.get("target") is not None:
        kw["target_spec"] = target_spec(cfg["target"], cfg["latent_dim"])
    return kw
