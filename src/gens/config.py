"""Every option of every method, declared once: default, allowed values and help text (torch-free).

One dataclass per method, as nanoGPT's ``GPTConfig``: its fields are the method module's constructor
options (``gens.methods.METHODS[name]``) with their defaults; ``TrainConfig`` holds what every training takes
(latent dimension, batch, budget), ``RunConfig`` what only a run folder takes (``gens train``) and
``EstimatorConfig`` what only the scikit-learn estimators take. From these are derived:

- the ``gens train`` flags (``gens.cli.train``: type, choices, help and default shown in ``--help``),
- the run folder's options and config.json (``gens.runconfig.DEFAULTS``, ``resolve_config``),
- the estimators' parameters (``gens.estimators``: explicit signatures whose defaults are read from here),
- ``gens reproduce``'s unit keys (``gens.reproduce.measure.method_defaults``),

and ``tests/test_defaults.py`` checks that the module constructors, the estimators, the CLI and the run
config agree with this file. **A new option is one field** (``option(default, help, ...)``) in the method's
config; its metadata says where it appears:

- ``cli``: a ``gens train`` flag and a run option (False: module / estimator only),
- ``estimator``: an estimator parameter (False: CLI / module only),
- ``module``: a keyword of the module constructor (False: a training option, not the module's),
- ``run_name``: its name in config.json / on the command line when it differs (``n_labels`` -> ``labels``),
- ``choices``: allowed values (a tuple, or a ``gens.registry.Registry`` whose names count at call time),
- ``flag`` / ``action``: a CLI spelling other than ``--name`` (``--no-leave-one-out``, store_true),
- ``type`` / ``nargs`` / ``metavar``: for the CLI when the default does not say (None defaults).
- ``experimental``: measured to change nothing (or to harm), kept for the record: a keyword of the module
  constructor only (never a ``gens train`` flag, a run option or an estimator parameter), listed by
  ``experimental_options(method)``. Old run folders and checkpoints holding such keys still load.

The budget: ``DEFAULT_STEPS`` optimiser steps when neither ``max_epochs`` nor ``max_steps`` is given
(``gens.training.budget``); ``max_epochs`` alone means epochs only, both mean whichever comes first.
The trained model: the exponential moving average of the weights with the method's decay
``WEIGHT_AVERAGE[method]`` (``weight_average_default``: 0.999 for the GEN, 0 for the others, i.e. the last
step's weights; ``TrainConfig.weight_average``, None: the method's, ``gens.averaging``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from numbers import Real

from gens.registry import BANKS, OBJECTIVES

__all__ = [
    "DEFAULT_STEPS",
    "METHOD_CONFIGS",
    "PAPER_EPOCHS",
    "WEIGHT_AVERAGE",
    "AAEConfig",
    "AEConfig",
    "EstimatorConfig",
    "GENConfig",
    "NetworkConfig",
    "RunConfig",
    "SemiSupervisedConfig",
    "TrainConfig",
    "VAEConfig",
    "WAEConfig",
    "defaults",
    "estimator_options",
    "experimental_options",
    "meta",
    "method_defaults",
    "option",
    "options",
    "check_weight_average",
    "resolve_weight_average",
    "weight_average_default",
]

# The default budget in optimiser steps (BENCHMARKS.md, "Robustness"); ``gens.training.DEFAULT_STEPS`` is this.
# Here, not in gens.training, so that ``gens train --help`` can show it without importing torch.
DEFAULT_STEPS = 6000
PAPER_EPOCHS = 12  # the budget of the paper's runs and of earlier gens versions (``gens.training.DEFAULT_EPOCHS``)
# Per method, the decay of the exponential moving average of the weights that becomes the trained model
# (``gens.averaging``; 0: the last step's weights). Measured (BENCHMARKS.md): on six GEN runs the average's
# latent entropy gap, test MSE and eigenvalue range were better on every one; on the AAE it made two of three
# seeds reconstruct much worse, so the baselines keep their last weights unless asked (AE, VAE, WAE and
# semisupervised unmeasured: their behaviour before averaging existed). One entry per name in METHOD_CONFIGS
# (tests/test_defaults.py).
WEIGHT_AVERAGE = {"gen": 0.999, "ae": 0.0, "vae": 0.0, "aae": 0.0, "wae": 0.0, "semisupervised": 0.0}


def weight_average_default(method: str) -> float:
    """The decay of ``method``'s weight average when none is given (``WEIGHT_AVERAGE[method]``)."""
    if not isinstance(method, str) or method not in WEIGHT_AVERAGE:
        raise ValueError(f"method: must be one of {', '.join(WEIGHT_AVERAGE)}, got {method!r}")
    return WEIGHT_AVERAGE[method]


def check_weight_average(value) -> float:
    """``value`` as a float in [0, 1), or ValueError "weight_average: ..." (NaN, bool and str are refused)."""
    if isinstance(value, (bool, str)) or not isinstance(value, Real) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"weight_average: must be a number in [0, 1) (the decay of the weights' moving average; "
                         f"0: none), got {value!r}")
    return float(value)


def resolve_weight_average(value, method: str | None) -> float:
    """``value`` checked (:func:`check_weight_average`), or for None ``method``'s default decay
    (``WEIGHT_AVERAGE``); ValueError "weight_average: ..." for anything else, or for None without a gens method
    to take the default from."""
    if value is None:
        if method not in WEIGHT_AVERAGE:
            raise ValueError("weight_average: None means the method's default (gens.config.WEIGHT_AVERAGE), but "
                             f"the module is of no gens method (method {method!r}); give the decay, a number in "
                             "[0, 1)")
        return weight_average_default(method)
    return check_weight_average(value)

# The GEN's regulariser weight and bandwidth factor, chosen by the MNIST sweep in BENCHMARKS.md ("Training
# defaults"); gens.methods.gen.DEFAULT_LAM / DEFAULT_BANDWIDTH_SCALE / DEFAULT_COVERAGE must equal them
# (tests/test_defaults.py).
GEN_LAM = 0.03
GEN_BANDWIDTH_SCALE = 0.75
GEN_COVERAGE = 1.0  # gens.methods.gen.DEFAULT_COVERAGE: without it the latents inflate on small data, long budgets


def option(default, help: str, *, cli: bool = True, estimator: bool = True, module: bool = True,
           run_name: str | None = None, choices=None, flag: str | None = None, action: str | None = None,
           type=None, nargs=None, metavar=None, experimental: bool = False):
    """A config field: ``default`` plus where the option appears and how (see the module docstring)."""
    if experimental:  # the module's keyword alone
        cli = estimator = False
    return field(default=default, metadata={
        "help": help, "cli": cli, "estimator": estimator, "module": module, "run_name": run_name,
        "choices": choices, "flag": flag, "action": action, "type": type, "nargs": nargs, "metavar": metavar,
        "experimental": experimental})


def meta(f: dataclasses.Field) -> dict:
    """A field's metadata with its name, run name and default filled in."""
    m = dict(f.metadata)
    m["name"] = f.name
    m["run_name"] = m.get("run_name") or f.name
    m["default"] = f.default
    return m


# ------------------------------------------------------------------------------------- the methods


@dataclass(frozen=True)
class NetworkConfig:
    """``gens.methods.base.BaseAutoencoder``: the networks and the optimiser every method shares."""

    arch: str = option("auto", "network architecture (auto: convolutional for colour images)",
                       choices=("auto", "fc", "conv"))
    hidden: tuple = option((1000, 1000), "hidden widths of the FC networks", type=int, nargs="+")
    lr: float = option(2e-4, "Adam learning rate")
    betas: tuple = option((0.5, 0.999), "Adam betas (the paper's)", cli=False, estimator=False)


@dataclass(frozen=True)
class AEConfig(NetworkConfig):
    """``gens.methods.ae.AEModule``: a plain autoencoder."""


@dataclass(frozen=True)
class VAEConfig(NetworkConfig):
    """``gens.methods.vae.VAEModule``."""

    lam: float = option(1e-3, "regulariser weight lambda")


@dataclass(frozen=True)
class AAEConfig(NetworkConfig):
    """``gens.methods.aae.AAEModule``."""

    target_spec: object = option(None, "target spec dict (None: N(0, I); the user-facing option is target)",
                                      cli=False, estimator=False)
    lam: float = option(0.01, "regulariser weight lambda")
    disc_hidden: tuple = option((1000, 1000), "AAE: hidden widths of the latent discriminator", cli=False)


@dataclass(frozen=True)
class WAEConfig(NetworkConfig):
    """``gens.methods.wae.WAEModule``."""

    target_spec: object = option(None, "target spec dict (None: N(0, I); the user-facing option is target)",
                                      cli=False, estimator=False)
    lam: float = option(0.01, "regulariser weight lambda")


@dataclass(frozen=True)
class GENConfig(NetworkConfig):
    """``gens.methods.gen.GENModule`` (Algorithm 1); the module docstring explains every option."""

    target_spec: object = option(None, "target spec dict (None: N(0, I); the user-facing option is target)",
                                      cli=False, estimator=False)
    bandwidth: float | None = option(None, "GEN: kernel bandwidth h (default: h_opt for the target and m)",
                                     type=float)
    bandwidth_correction: bool = option(False, "GEN: use h / sqrt(1 + h^2)", action="store_true")
    lam: float = option(GEN_LAM, "regulariser weight lambda")
    objective: str = option("nonsaturating", "GEN: form of the eq. 3 JSD term", choices=OBJECTIVES)
    bank_mode: str = option("refresh", "GEN: latent bank", choices=BANKS)
    bank_size: int = option(2000, "GEN: bank size m, capped at the data")
    refresh_every: int = option(10, "GEN: re-encode the bank every kb batches")
    bank_reshuffle: bool = option(False, "GEN, experimental: draw a new bank sample set every epoch (measured: no "
                                  "effect beyond seed noise, BENCHMARKS.md)", experimental=True)
    eps: float | None = option(None, "GEN: density floor of the kl objective (None: 1e-3 x the target's peak)",
                               cli=False, estimator=False)
    query_noise: bool = option(False, "GEN, experimental: evaluate eq. 3 at z' + h eps (measured: no effect beyond "
                               "seed noise, BENCHMARKS.md)", experimental=True)
    bandwidth_scale: float = option(GEN_BANDWIDTH_SCALE, "GEN: multiply h_opt by this factor in (0, 1] (see "
                                    "BENCHMARKS.md)")
    leave_one_out: bool = option(True, "GEN: leave a minibatch's own samples out of the bank when eq. 3 is "
                                 "evaluated (--no-leave-one-out: keep them, biased)", flag="--no-leave-one-out",
                                 action="store_false")
    coverage: float = option(GEN_COVERAGE, "GEN: weight of the target-sample half of eq. 2, which draws latents into "
                             "regions the target fills (0: eq. 3 alone, the paper)")
    coverage_draws: int = option(1, "GEN, experimental: target draws per minibatch latent in the coverage term "
                                 "(more: a less noisy pull at a larger KDE cost)", experimental=True)


@dataclass(frozen=True)
class SemiSupervisedConfig(GENConfig):
    """``gens.methods.semisupervised.SemiSupervisedGENModule`` (Sec. 5.4): GEN's options and these."""

    n_modes: int | None = option(None, "semi-supervised: mixture components, one per class (None: 10 or the "
                                 "target's)", cli=False)
    mode_scale: float = option(6.0, "semi-supervised: minimum distance of the mixture means", cli=False)
    sup_weight: float = option(1.0, "semi-supervised: weight of the supervised term", cli=False)
    supervision: str = option("ce", "semi-supervised: ce (cross-entropy of p(k | z)) | nll", cli=False,
                              choices=("ce", "nll"))
    labelled_batch: int = option(100, "semi-supervised: labelled samples per step", cli=False)
    n_labels: int | None = option(None, "semi-supervised: keep N training labels (balanced per class), the rest "
                                  "unlabelled; the labelled samples are pulled to their class's mode (implies "
                                  "--method semisupervised)", run_name="labels", estimator=False, type=int)
    label_seed: int = option(0, "semi-supervised: seed of the kept labels", cli=False, estimator=False)
    lam: float = option(0.01, "regulariser weight lambda")
    bandwidth_scale: float = option(1.0, "GEN: multiply h_opt by this factor in (0, 1] (see BENCHMARKS.md)")


# name -> config, in the order of gens.methods.METHODS (tests/test_defaults.py checks they match)
METHOD_CONFIGS = {"gen": GENConfig, "ae": AEConfig, "vae": VAEConfig, "aae": AAEConfig, "wae": WAEConfig,
                  "semisupervised": SemiSupervisedConfig}


# ----------------------------------------------------------------------- training, runs, estimators


@dataclass(frozen=True)
class TrainConfig:
    """What every training takes (``gens train``, the estimators, ``gens.training.train``)."""

    latent_dim: int = option(8, "latent dimension l", module=False)
    max_epochs: int | None = option(None, "epochs; alone: epochs only, with --steps: whichever ends first",
                                    module=False, run_name="epochs", type=int)
    max_steps: int | None = option(None, "optimiser steps (default with neither: gens.training.DEFAULT_STEPS "
                                   f"= {DEFAULT_STEPS}); with --epochs: whichever ends first", module=False,
                                   run_name="steps", type=int)
    batch_size: int = option(100, "minibatch size", module=False)
    weight_average: float | None = option(None, "decay of the exponential moving average of the weights that "
                                          "becomes the trained model (0: the last step's weights); warmed up as "
                                          "min(decay, (1 + t) / (10 + t)) after t updates (default: the method's, "
                                          "gens.config.WEIGHT_AVERAGE: 0.999 for the GEN, 0 for the others)",
                                          module=False, type=float)


@dataclass(frozen=True)
class RunConfig:
    """What only a run folder takes (``gens train``; ``gens.runconfig``)."""

    method: str = option("gen", "method (--labels N: semisupervised)", choices=tuple(METHOD_CONFIGS),
                         estimator=False, module=False)
    data: str = option("digits", "digits | mnist:DIR | fashion-mnist:DIR | svhn:DIR | images:DIR | FILE.npy",
                       estimator=False, module=False)
    seed: int = option(0, "seed of everything random", estimator=False, module=False)
    target: str = option("normal", "GEN/AAE/WAE target: normal | mog:K | mog:K:SCALE | mog with --modes K "
                         "(semisupervised: mog:10)", estimator=False, module=False)
    limit: int | None = option(None, "use only the first N samples of each split (default: all)", estimator=False,
                               module=False, type=int)
    val_fraction: float = option(0.1, "held-out share of the training split", estimator=False, module=False)
    checkpoint_every: int = option(100, "save last.ckpt every N batches and at the end, 0: after every epoch",
                                   estimator=False, module=False)
    accelerator: str = option("auto", "Lightning accelerator: cpu | gpu | auto", estimator=False, module=False)
    devices: str = option("auto", "Lightning devices: N or auto", estimator=False, module=False)
    num_nodes: int = option(1, "Lightning num_nodes", estimator=False, module=False)
    strategy: str = option("auto", "Lightning strategy: auto | ddp | ...", estimator=False, module=False)


@dataclass(frozen=True)
class EstimatorConfig:
    """What only the scikit-learn estimators take (``gens.estimators``)."""

    target: object = option(None, "None or 'normal': N(0, I); 'mog:K[:SCALE]'; a spec dict; a Target",
                            cli=False, module=False)
    scaling: str = option("auto", "auto: [0, 1] data as they are, else min-max; minmax; none",
                          choices=("auto", "minmax", "none"), cli=False, module=False)
    val_fraction: float = option(0.0, "held-out share of X for validation (0: none)", cli=False, module=False)
    accelerator: str = option("cpu", "Lightning accelerator", choices=("cpu", "gpu", "cuda", "mps", "auto"),
                              cli=False, module=False)
    random_state: object = option(None, "int, RandomState or None", cli=False, module=False)
    verbose: bool = option(False, "progress bar and Lightning's messages", cli=False, module=False)


# ---------------------------------------------------------------------------------------- queries


def options(config) -> dict:
    """name -> metadata (``meta``) of a config class's fields, in declaration order."""
    return {f.name: meta(f) for f in dataclasses.fields(config)}


def defaults(config) -> dict:
    """name -> default of a config class's fields."""
    return {f.name: f.default for f in dataclasses.fields(config)}


def method_defaults(method: str) -> dict:
    """The module constructor defaults of ``method`` as JSON-able values (tuples -> lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in defaults(METHOD_CONFIGS[method]).items()}


def estimator_options(method: str) -> dict:
    """name -> metadata of an estimator's parameters (``gens.GEN`` for "gen", ...): the training options, the
    method's estimator options, then the estimator-only ones (as the estimators' signatures list them)."""
    out = {"latent_dim": options(TrainConfig)["latent_dim"]}
    out.update({k: m for k, m in options(METHOD_CONFIGS[method]).items() if m["estimator"]})
    if "target_spec" in options(METHOD_CONFIGS[method]):
        out["target"] = options(EstimatorConfig)["target"]
    out.update({k: m for k, m in options(TrainConfig).items() if k != "latent_dim"})
    out.update({k: m for k, m in options(EstimatorConfig).items() if k != "target"})
    return out


def experimental_options(method: str) -> dict:
    """name -> metadata of ``method``'s experimental options (module keywords only; see the module docstring)."""
    return {k: m for k, m in options(METHOD_CONFIGS[method]).items() if m["experimental"]}
