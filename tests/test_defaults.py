"""Every default is declared once, in ``gens.config``: the module constructors, the estimators, ``gens train``'s
flags, the run config (config.json) and ``gens reproduce``'s unit keys all agree with it, for every option of
every method. And the budget rule: DEFAULT_STEPS steps unless told otherwise, everywhere."""

import argparse
import inspect
import json

import numpy as np
import pytest

from gens import config as C
from gens import estimators as E
from gens.methods import METHODS, build_module, method_parameters
from gens.runconfig import (
    DEFAULTS,
    METHOD_DEFAULTS,
    RUN_FIELDS,
    RUN_OPTIONS,
    module_kwargs,
    resolve_config,
)

ESTIMATORS = {"gen": E.GEN, "ae": E.AE, "vae": E.VAE, "aae": E.AAE, "wae": E.WAE, "semisupervised": E.SemiSupervisedGEN}
SHAPE, L = [1, 8, 8], 3


def _plain(v):
    return [_plain(u) for u in v] if isinstance(v, (list, tuple)) else v


def _module_hparams(method, **kw) -> dict:
    return dict(build_module(method, SHAPE, L, **kw).hparams)


# ----------------------------------------------------------------------------------- modules


def test_one_config_per_method():
    assert list(C.METHOD_CONFIGS) == list(METHODS)
    assert list(ESTIMATORS) == list(METHODS)


@pytest.mark.parametrize("method", list(METHODS))
def test_module_constructor_defaults_are_the_config(method):
    params = method_parameters(method)
    config = C.defaults(C.METHOD_CONFIGS[method])
    assert set(config) == set(params)
    for name, p in params.items():
        assert p.default == config[name], f"{method}.{name}: module {p.default!r}, gens.config {config[name]!r}"


def test_module_constants_are_the_config():
    from gens.methods import gen

    assert gen.DEFAULT_LAM == C.GEN_LAM and gen.DEFAULT_BANDWIDTH_SCALE == C.GEN_BANDWIDTH_SCALE
    if hasattr(gen, "DEFAULT_COVERAGE"):
        assert gen.DEFAULT_COVERAGE == C.GEN_COVERAGE


def test_reproduce_unit_keys_are_the_module_defaults():
    """``method_defaults`` (part of every unit's key) equals what the constructors say, in JSON form."""
    from gens.reproduce.measure import method_defaults

    for method in METHODS:
        from_modules = {k: _plain(p.default) for k, p in method_parameters(method).items()
                        if p.default is not inspect.Parameter.empty}
        assert method_defaults(method) == from_modules
        json.dumps(method_defaults(method))


# -------------------------------------------------------------------------------- estimators


@pytest.mark.parametrize("method", list(METHODS))
def test_estimator_signature_is_the_config(method):
    sig = inspect.signature(ESTIMATORS[method].__init__).parameters
    names = [k for k in sig if k != "self"]
    options = C.estimator_options(method)
    assert set(names) == set(options), set(names) ^ set(options)
    for name in names:
        assert sig[name].default == options[name]["default"], f"{method}: {name}"
    est = ESTIMATORS[method]()
    assert est.get_params() == {k: m["default"] for k, m in options.items()}


@pytest.mark.parametrize("method", list(METHODS))
def test_estimator_builds_the_default_module(method):
    est = ESTIMATORS[method](latent_dim=L)
    kw = est._module_kwargs(est._checked_params(), n_train=10**6)  # no bank cap
    assert _module_hparams(method, **kw) == _module_hparams(method)


@pytest.mark.parametrize("method", list(METHODS))
def test_estimator_weight_average_default_is_its_methods(method, monkeypatch):
    """The estimator passes None on; gens.training.fit resolves it from the module it builds: the method's own
    (gens.config.WEIGHT_AVERAGE), not a parent class's (semisupervised's module subclasses the GEN's)."""
    from gens import training
    from gens.averaging import module_method, resolve_weight_average

    est = ESTIMATORS[method](latent_dim=L)
    assert est.weight_average is None and est._checked_params()["weight_average"] is None
    module = METHODS[method]((1, 4, 4), 2, hidden=[8])
    assert module_method(module) == method == est._method
    assert resolve_weight_average(None, module_method(module)) == C.WEIGHT_AVERAGE[method]
    seen = {}

    def fake_fit(module, dm, **kw):
        seen["decay"] = resolve_weight_average(kw["weight_average"], module_method(module))
        raise RuntimeError("stop")

    monkeypatch.setattr(training, "fit", fake_fit)
    X = np.random.RandomState(0).rand(40, 16)
    with pytest.raises(RuntimeError, match="stop"):
        est.set_params(hidden=(8,), max_steps=1).fit(X, np.zeros(40, int) if method == "semisupervised" else None)
    assert seen["decay"] == C.WEIGHT_AVERAGE[method]


def test_estimator_default_budget_is_default_steps():
    from gens.training import DEFAULT_STEPS, budget

    for cls in ESTIMATORS.values():
        est = cls()
        assert est.max_epochs is None and est.max_steps is None
        assert budget(est.max_epochs, est.max_steps) == {"max_epochs": -1, "max_steps": DEFAULT_STEPS}
    assert DEFAULT_STEPS is C.DEFAULT_STEPS


# ----------------------------------------------------------------------------- CLI, run config


def _train_parser():
    from gens.cli.train import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    return p


def test_every_run_option_is_a_flag_with_the_config_choices():
    actions = {a.dest: a for a in _train_parser()._actions}
    assert set(RUN_OPTIONS) <= set(actions)
    assert set(actions) - set(RUN_OPTIONS) == {"help", "out", "resume", "modes", "no_progress"}
    for opt, m in RUN_FIELDS.items():
        a = actions[opt]
        assert a.default is argparse.SUPPRESS  # left out: the default below (on --resume, the saved value)
        if m["choices"] is not None:
            assert list(a.choices) == list(m["choices"])
    assert vars(_train_parser().parse_args([])) == {"out": None, "resume": None, "modes": None, "no_progress": False}


@pytest.mark.parametrize("method", list(METHODS))
def test_run_config_defaults_are_the_config(method):
    cfg = resolve_config({"method": method, "latent_dim": L})
    train, run = C.defaults(C.TrainConfig), C.defaults(C.RunConfig)
    assert resolve_config({"method": method})["latent_dim"] == train["latent_dim"]
    assert cfg["batch_size"] == train["batch_size"]
    assert train["weight_average"] is None  # the method's default, resolved into the run config
    assert cfg["weight_average"] == C.WEIGHT_AVERAGE[method] == C.weight_average_default(method)
    assert cfg["epochs"] is None and cfg["steps"] == C.DEFAULT_STEPS
    for k in ("data", "seed", "limit", "val_fraction", "checkpoint_every", "accelerator", "num_nodes", "strategy"):
        assert cfg[k] == run[k], k
    config = C.defaults(C.METHOD_CONFIGS[method])
    for opt, per_method in METHOD_DEFAULTS.items():
        name = RUN_FIELDS[opt]["name"]
        if name in config:
            assert cfg[opt] == _plain(config[name]) == per_method[method], f"{method}: {opt}"
        else:
            assert cfg[opt] is None and method not in per_method, f"{method}: {opt}"
    # and the module the run builds is the default module
    kw = module_kwargs(cfg)
    if method == "semisupervised":
        kw.pop("target_spec")  # gens train's semisupervised target (mog:10) is the module's default target
    else:
        assert kw.pop("target_spec", None) in (None, {"type": "standard_normal", "dim": L})
    assert _module_hparams(method, **kw) == _module_hparams(method)


def test_method_independent_defaults_are_shared():
    for opt, per_method in METHOD_DEFAULTS.items():
        values = list(per_method.values())
        assert DEFAULTS[opt] == (values[0] if all(v == values[0] for v in values) else None)


def test_cli_help_shows_the_config_defaults():
    text = _train_parser().format_help()
    assert f"= {C.DEFAULT_STEPS})" in text and "gen 0.03" in text and "semisupervised 1.0" in text


def test_train_function_defaults_are_the_config():
    from gens.training import train

    p = inspect.signature(train).parameters
    t = C.defaults(C.TrainConfig)
    assert (p["latent_dim"].default, p["batch_size"].default) == (t["latent_dim"], t["batch_size"])
    assert p["max_epochs"].default is None and p["max_steps"].default is None
    from gens.training import WEIGHT_AVERAGE, fit

    assert p["weight_average"].default is inspect.signature(fit).parameters["weight_average"].default \
        is t["weight_average"] is None  # None: the method's default, resolved by fit
    assert WEIGHT_AVERAGE is C.WEIGHT_AVERAGE and list(C.WEIGHT_AVERAGE) == list(C.METHOD_CONFIGS)
    assert C.WEIGHT_AVERAGE["gen"] == 0.999 and all(v == 0.0 for k, v in C.WEIGHT_AVERAGE.items() if k != "gen")


# ------------------------------------------------------------------------------------ the budget


def test_budget_options_and_their_errors():
    assert resolve_config({"epochs": 5})["steps"] is None  # --epochs alone: epochs only
    both = resolve_config({"epochs": 5, "steps": 7})
    assert (both["epochs"], both["steps"]) == (5, 7)
    for opt in ("epochs", "steps"):
        with pytest.raises(ValueError, match=f"^{opt}:"):
            resolve_config({opt: 0})
    with pytest.raises(ValueError, match="^max_steps:"):
        E.AE(latent_dim=1, max_steps=0).fit([[0.0, 1.0], [1.0, 0.0]])


@pytest.mark.parametrize("method", ["gen", "semisupervised"])
def test_experimental_options_are_module_keywords_only(method, tmp_path):
    """query_noise and bank_reshuffle (measured: no effect) are not gens train flags, run options or estimator
    parameters; the module still takes them, so old checkpoints and run folders holding them load."""
    from gens.runconfig import resolve_config
    from gens.runs import load_run, train_run

    experimental = C.experimental_options(method)
    assert set(experimental) == {"query_noise", "bank_reshuffle", "coverage_draws"}
    help_text = _train_parser().format_help()
    params = ESTIMATORS[method]().get_params()
    for name in experimental:
        assert name not in RUN_FIELDS and name not in params and name in method_parameters(method)
        assert f"--{name.replace('_', '-')}" not in help_text
    if method != "gen":
        return
    assert _module_hparams(method, query_noise=True, bank_reshuffle=True)["query_noise"] is True
    run = tmp_path / "old"  # a run folder whose config.json (an older gens) holds the experimental keys
    train_run(resolve_config({"method": "gen", "data": "digits", "steps": 2, "hidden": [8], "latent_dim": 2,
                              "limit": 120, "bank_size": 50, "accelerator": "cpu"}), run, progress=False)
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "query_noise": False, "bank_reshuffle": False}))
    module, loaded = load_run(run)
    assert loaded["query_noise"] is False and module.query_noise is False
