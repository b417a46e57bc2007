"""Semi-supervised GEN (paper Sec. 5.4): a mixture target whose component k stands for class k.

Every minibatch x (n, *data_shape) is trained as in the GEN (eq. 3): reconstruction + lam * the KDE-JSD
of its latents z' = E(x) against the whole mixture p_t (h = h_opt for the mixture and the bank size).
Labelled samples are *additionally* pulled toward their class's component: each step draws
``labelled_batch`` samples (x_l, y_l) from the pool of labelled training samples and adds

    sup_weight * S(E(x_l), y_l),
    S = "ce":  mean_k -log p(y_k | z_k),   p(k | z) = softmax_k(log w_k + log N(z; mu_k, Sigma_k))
    S = "nll": mean_k -log N(z_k; mu_{y_k}, Sigma_{y_k})   (the component's own log-density)

so the supervision does not depend on how many labelled samples a data-loader batch happens to hold
(with 100 labels in 50K samples, a batch of 100 has 0.2 on average). Labels follow scikit-learn's
semi-supervised convention: y = -1 marks an unlabelled sample, classes are 0..K-1.

- ``n_modes`` K: with ``target_spec=None`` the target is ``mixture_on_simplex(K, latent_dim, mode_scale)``
  (unit-covariance modes at least ``mode_scale`` apart: on a circle in 2-D, simplex / cross-polytope
  vertices in l-D), K = 10 when left out. A given ``target_spec`` fixes K (n_modes, if given, must match).
- ``n_labels``: keep only this many of the training labels, balanced over the classes and chosen with
  ``label_seed`` (``select_labelled``); None keeps every label >= 0 the data carry.
- Labels come from ``trainer.datamodule.train_labels()`` (``GensDataModule``) or the labels tensor of
  the train dataloader's ``TensorDataset``; the batches' own labels are not used for training. Data
  without any label train an unsupervised GEN with the mixture target (with a warning).
- ``predict(x)``: the most probable component, argmax_k p(k | E(x)); ``predict_proba(x)``: p(k | E(x)).
- Logged besides the GEN's values: ``sup`` (the supervised term), ``acc`` (training: of the labelled
  draw; validation: of the validation samples that have labels).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

from gens._validation import check_choice, check_float, check_int
from gens.methods.base import batch_x
from gens.methods.gen import GENModule

# the setting of the measured semi-supervised runs (BENCHMARKS.md), kept apart from the GEN's defaults
DEFAULT_LAM = 0.01

__all__ = ["SemiSupervisedGENModule", "SUPERVISION", "select_labelled", "check_labels_for"]

SUPERVISION = ("ce", "nll")
DEFAULT_MODES = 10


def check_labels_for(y, n_components: int, n: int | None = None, name: str = "y") -> np.ndarray:
    """Validate semi-supervised labels: integers, -1 (unlabelled) or 0..K-1; length n if given. -> int64 (n,)."""
    arr = np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y)
    if arr.ndim != 1:
        raise ValueError(f"{name}: must be a 1-D array of labels, got shape {arr.shape}")
    if n is not None and len(arr) != n:
        raise ValueError(f"{name}: must have one label per sample ({n}), got {len(arr)}")
    if arr.size and not (np.issubdtype(arr.dtype, np.integer)):
        if not (np.issubdtype(arr.dtype, np.floating) and np.isfinite(arr).all() and (arr == np.round(arr)).all()):
            raise ValueError(f"{name}: labels must be integers (-1 = unlabelled, 0..{n_components - 1}), got "
                             f"dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    bad = arr[(arr < -1) | (arr >= n_components)]
    if bad.size:
        raise ValueError(f"{name}: labels must be -1 (unlabelled) or a component 0..{n_components - 1} of the "
                         f"{n_components}-mode target, got {int(bad[0])}")
    return arr


def select_labelled(y, n_labels: int, seed: int = 0, n_classes: int | None = None) -> np.ndarray:
    """Indices of ``n_labels`` labelled samples, balanced over the classes, drawn with ``seed``.

    y: (n,) int labels (-1 = unlabelled, never chosen). Each class gets n_labels // C samples and
    n_labels % C classes (chosen at random) one more, C = n_classes or the number of classes present.
    Returns sorted int64 indices. Raises ValueError when a class has too few labelled samples.
    """
    y = np.asarray(y, dtype=np.int64)
    n_labels = check_int("n_labels", n_labels, minimum=0)
    seed = check_int("label_seed", seed, minimum=0, maximum=2**32 - 1)
    classes = np.arange(n_classes) if n_classes is not None else np.unique(y[y >= 0])
    if n_labels == 0:
        return np.zeros(0, dtype=np.int64)
    if len(classes) == 0:
        raise ValueError(f"n_labels: asked for {n_labels} labelled samples but the data carry no labels")
    rng = np.random.RandomState(seed)
    per = np.full(len(classes), n_labels // len(classes))
    per[rng.permutation(len(classes))[: n_labels % len(classes)]] += 1
    chosen = []
    for c, q in zip(classes, per):
        pool = np.flatnonzero(y == c)
        if len(pool) < q:
            raise ValueError(f"n_labels: {n_labels} balanced labels need {q} of class {int(c)}, which has only "
                             f"{len(pool)} labelled samples")
        chosen.append(rng.choice(pool, size=q, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


class SemiSupervisedGENModule(GENModule):
    """GEN with a K-mode mixture target and labelled samples pulled to their component (module docstring)."""

    method_name = "semisupervised"  # its own, not GENModule's (gens.config.WEIGHT_AVERAGE)

    def __init__(self, data_shape, latent_dim: int, target_spec=None, n_modes: int | None = None,
                 mode_scale: float = 6.0, sup_weight: float = 1.0, supervision: str = "ce", labelled_batch: int = 100,
                 n_labels: int | None = None, label_seed: int = 0, bandwidth_scale: float = 1.0,
                 lam: float = DEFAULT_LAM, **gen_kwargs):
        """The semi-supervised arguments here; every other one is GENModule's, with its default (``gen_kwargs``)."""
        given = n_modes is not None
        n_modes = check_int("n_modes", DEFAULT_MODES if n_modes is None else n_modes, minimum=2)
        mode_scale = check_float("mode_scale", mode_scale, minimum=0.0, min_inclusive=False)
        if target_spec is None:
            target_spec = {"type": "mixture_on_simplex", "n_components": n_modes,
                           "dim": check_int("latent_dim", latent_dim, minimum=1), "scale": mode_scale}
        super().__init__(data_shape, latent_dim, target_spec=target_spec, bandwidth_scale=bandwidth_scale, lam=lam,
                         **gen_kwargs)
        k = self.target.n_components
        if given and k != n_modes:
            raise ValueError(f"n_modes: is {n_modes} but the target has {k} components; give a target with "
                             "n_modes components (or leave one of the two out)")
        if k < 2:
            raise ValueError(f"target_spec: the semi-supervised GEN needs a mixture of >= 2 components (one per "
                             f"class), got {k}; use e.g. 'mog:10'")
        self.n_modes = k
        self.sup_weight = check_float("sup_weight", sup_weight, minimum=0.0)
        self.supervision = check_choice("supervision", supervision, SUPERVISION)
        self.labelled_batch = check_int("labelled_batch", labelled_batch, minimum=1)
        self.n_labels = None if n_labels is None else check_int("n_labels", n_labels, minimum=0)
        self.label_seed = check_int("label_seed", label_seed, minimum=0, maximum=2**32 - 1)
        self._pool = (None, None)  # labelled training samples (n_l, *data_shape) and labels (n_l,)

    # ---- prediction ---------------------------------------------------------------------------------
    def component_logits(self, z: torch.Tensor) -> torch.Tensor:
        """log w_k + log N(z; mu_k, Sigma_k) of latents z: (n, l) -> (n, K) (unnormalised log p(k | z))."""
        return self.target.component_log_prob(z)

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """p(k | E(x)) for x: (n, *data_shape) -> (n, K) float64 on the CPU, rows sum to 1."""
        dev = self.bandwidth_h.device
        z = torch.cat([self.encode(c.to(dev)).double() for c in x.split(batch_size)]) if len(x) else \
            torch.zeros(0, self.latent_dim, dtype=torch.float64, device=dev)
        return torch.softmax(self.component_logits(z), dim=1).cpu()

    def predict(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """The most probable component argmax_k p(k | E(x)) for x: (n, *data_shape) -> (n,) int64."""
        return self.predict_proba(x, batch_size).argmax(1)

    # ---- the loss -----------------------------------------------------------------------------------
    def supervised_term(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """S(z, y) of labelled latents z: (n, l), labels y: (n,) in 0..K-1 -> scalar (module docstring).

        Not an equation of the paper: Sec. 5.4 says only that a small labelled set maps samples to their mode."""
        logits = self.component_logits(z)
        if self.supervision == "ce":
            return F.cross_entropy(logits, y)
        return -(logits.gather(1, y[:, None]).squeeze(1) - torch.log(self.target.weights.to(z)[y])).mean()

    def losses(self, x, training: bool = True):
        out = super().losses(x, training)
        px, py = self._pool
        if training and px is not None and len(py) > 0:
            pick = torch.randint(len(py), (min(self.labelled_batch, len(py)),), device=py.device)
            yl = py[pick].to(self.bandwidth_h.device)
            z = self.encode(px[pick].to(self.bandwidth_h.device))
            sup = self.supervised_term(z, yl)
            out["loss"] = out["loss"] + self.sup_weight * sup
            out["sup"] = sup.detach()
            out["acc"] = (self.component_logits(z.detach()).argmax(1) == yl).float().mean()
        return out

    def validation_step(self, batch, batch_idx):
        x = batch_x(batch)
        out = self.losses(x, training=False)
        if isinstance(batch, (tuple, list)) and len(batch) > 1:
            y = batch[1]
            keep = (y >= 0) & (y < self.n_modes)
            if bool(keep.any()):
                z, yk = self.encode(x[keep]), y[keep]
                out["sup"] = self.supervised_term(z, yk).detach()
                out["acc"] = (self.component_logits(z).argmax(1) == yk).float().mean()
        self._log_losses("val", out, on_step=False, on_epoch=True)
        return out["loss"]

    # ---- the labelled pool --------------------------------------------------------------------------
    def on_train_start(self):
        super().on_train_start()
        x, y = _labelled_source(self.trainer)
        y = np.full(len(x), -1, dtype=np.int64) if y is None else check_labels_for(y, self.n_modes, len(x))
        idx = np.flatnonzero(y >= 0) if self.n_labels is None else \
            select_labelled(y, self.n_labels, self.label_seed, self.n_modes)
        if len(idx) == 0:
            warnings.warn("y: no labelled training samples; this trains an unsupervised GEN with a "
                          f"{self.n_modes}-mode mixture target (components are not tied to classes)", stacklevel=2)
        idx_t = torch.from_numpy(idx)
        self._pool = (x[idx_t].to(self.device), torch.from_numpy(y[idx]).to(self.device))

    @property
    def n_labelled(self) -> int:
        """How many labelled samples the last training run used (0 before training)."""
        return 0 if self._pool[1] is None else int(len(self._pool[1]))


def _labelled_source(trainer):
    """(train samples (n, *data_shape), train labels (n,) or None) from the datamodule or dataloader."""
    dm = getattr(trainer, "datamodule", None)
    if dm is not None and hasattr(dm, "train_tensor"):
        return dm.train_tensor(), (dm.train_labels() if hasattr(dm, "train_labels") else None)
    tensors = getattr(getattr(trainer.train_dataloader, "dataset", None), "tensors", None)
    if tensors is None:
        raise ValueError("data: the semi-supervised GEN needs random access to the labelled training samples (a "
                         "GensDataModule or a TensorDataset(x, y) train dataloader)")
    return tensors[0], (tensors[1] if len(tensors) > 1 else None)
