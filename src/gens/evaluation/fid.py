"""Fréchet distance between feature distributions (FID, Table 3) and two feature extractors.

FID = ||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2}) between Gaussians fitted to features of
real and generated images. Features come from either

- ``load_inception`` / ``inception_features``: the Inception-v3 network of the standard FID (TF
  2015-12-05 graph: 2048-d pool3 features) from the maintained package pytorch-fid (optional extra
  ``pip install 'gens[fid]'``, imported only here). Its weights are never downloaded: the user supplies
  ``pt_inception-2015-12-05-6726825d.pth`` (a path, or the torch hub cache $TORCH_HOME/hub/checkpoints),
  read with ``torch.load(weights_only=True)``. Scores are comparable with published FIDs only with that
  file (not checked against it here: it cannot be downloaded on these machines).
- ``domain_features``: the penultimate layer (128-d) of a small CNN classifier that gens trains on
  the labelled training split of the data source and caches on disk, so FID works offline. Such
  scores are comparable between models on the same data, not with published Inception FIDs.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import threading
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gens._validation import check_float, check_int, check_matrix

__all__ = ["FID_WEIGHTS_FILE", "DomainClassifier", "check_inception", "domain_classifier", "domain_features", "feature_statistics",
           "fid_from_features", "fid_score", "frechet_distance", "inception_features", "inception_weights_path",
           "load_inception"]

DOMAIN_PROTOCOL = 1  # bump when the classifier or its training changes: old cache files are not reused


# ------------------------------------------------------------------------------------ the distance

def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """(mean (d,), covariance (d, d) with ddof=1) of features: (n, d), in float64."""
    f = np.asarray(features.detach().cpu() if hasattr(features, "detach") else features, dtype=np.float64)
    check_matrix("features", f, min_rows=2)
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2): mu: (d,), sigma: (d, d).

    ||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr sqrtm(sigma1 sigma2), as in the reference FID code:
    if the product is singular (sqrtm not finite), ``eps`` I is added to both covariances; an imaginary
    part of the square root (numerical noise) is dropped when its diagonal is below 1e-3 and raises
    ValueError otherwise.
    """
    import scipy.linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,):
        raise ValueError(f"mu1: mu1 and mu2 must be vectors of one length, got {mu1.shape} and {mu2.shape}")
    for name, s in (("sigma1", s1), ("sigma2", s2)):
        if s.shape != (d, d):
            raise ValueError(f"{name}: must be a ({d}, {d}) covariance matching mu, got shape {s.shape}")
        if not np.isfinite(s).all():
            raise ValueError(f"{name}: must hold only finite values")
    eps = check_float("eps", eps, minimum=0.0, min_inclusive=False)
    with warnings.catch_warnings():  # a singular product is handled below, as in the reference code
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():
            offset = np.eye(d) * eps
            covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sigma1: sqrtm(sigma1 sigma2) has an imaginary component "
                             f"{np.abs(covmean.imag).max():.3g}; are both covariances positive semi-definite?")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def fid_from_features(features1, features2, eps: float = 1e-6) -> float:
    """FID between two feature sets: (n1, d) and (n2, d)."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2), eps=eps)


# ------------------------------------------------------------------------- Inception-v3 (FID variant)

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
_EXTRA = "inception_weights: needs the optional extra: pip install 'gens[fid]'"
_LOAD_LOCK = threading.Lock()


def _pytorch_fid():
    """``pytorch_fid.inception``, imported on first use (the optional extra ``gens[fid]``)."""
    try:
        from pytorch_fid import inception
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] == "pytorch_fid" or err.name is None:
            raise ValueError(_EXTRA) from None
        raise ValueError(f"{_EXTRA} ({_one_line(err)})") from None
    except (ImportError, RuntimeError, OSError, AttributeError) as err:  # e.g. a torchvision built for
        # another torch: "RuntimeError: operator torchvision::nms does not exist"
        raise ValueError(f"{_EXTRA} (importing pytorch_fid failed: {_one_line(err)})") from None
    return inception


def _one_line(err: BaseException, limit: int = 300) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def inception_weights_path(path=None) -> Path:
    """The FID Inception weights file: ``path`` (a file, or a folder holding ``FID_WEIGHTS_FILE``), or with
    ``path=None`` the torch hub cache ``$TORCH_HOME/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth``.

    Raises a one-line ValueError when the file is not there; nothing is ever downloaded.
    """
    where = f"put {FID_WEIGHTS_FILE} there or in $TORCH_HOME/hub/checkpoints ({_hub_checkpoints()})"
    if path is None:
        cached = _hub_checkpoints() / FID_WEIGHTS_FILE
        if cached.is_file():
            return cached
        raise ValueError(f"inception_weights: no weights file given and {cached} not found; pass the path of "
                         f"{FID_WEIGHTS_FILE} or put it in $TORCH_HOME/hub/checkpoints (it is never downloaded)")
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / FID_WEIGHTS_FILE
    if not path.is_file():
        raise ValueError(f"inception_weights: {path} not found; {where}")
    return path


def check_inception(path=None) -> Path:
    """Fail early, in one line, where ``load_inception(path)`` would: the optional extra ``gens[fid]`` is not
    installed, or the weights file is not there (see ``inception_weights_path``); returns the file."""
    _pytorch_fid()
    return inception_weights_path(path)


def _read_state_dict(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, TypeError, AttributeError) as err:
        # not a torch file, truncated, or a pickle that weights-only loading refuses
        raise ValueError(f"inception_weights: {path} is not a PyTorch weights file ({_one_line(err)})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"inception_weights: {path} does not hold a state_dict of tensors")
    return state


def _refuse_download(*args, **kwargs):
    raise RuntimeError("gens never downloads the FID Inception weights")


def load_inception(path=None, device=None):
    """pytorch-fid's FID Inception-v3 (``pytorch_fid.inception.InceptionV3``, 2048-d pool3 features) with
    the weights in ``path`` (see ``inception_weights_path``; ``None``: the torch hub cache), in eval mode.

    The network is pytorch-fid's own (optional extra ``gens[fid]``); the file is read here with
    ``torch.load(weights_only=True)`` and handed to it, so no download is ever attempted. The file must
    match the layout of ``pt_inception-2015-12-05-6726825d.pth`` exactly (strict keys and shapes; only
    BatchNorm's ``num_batches_tracked`` counters may be missing).
    """
    path = check_inception(path)
    inception = _pytorch_fid()
    state = _read_state_dict(path)
    used = []

    def from_file(url, *args, **kwargs):  # what pytorch-fid's fid_inception_v3() calls for its weights
        used.append(url)
        return state

    # pytorch-fid builds the network and then asks load_state_dict_from_url for FID_WEIGHTS_URL: it gets
    # the file read above instead; torch.hub's own download functions are blocked meanwhile, in case a
    # version of pytorch-fid fetches its weights another way.
    with _LOAD_LOCK, _patched(inception, "load_state_dict_from_url", from_file), \
            _patched(torch.hub, "load_state_dict_from_url", _refuse_download), \
            _patched(torch.hub, "download_url_to_file", _refuse_download):
        try:
            model = inception.InceptionV3([inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]],
                                          resize_input=True, normalize_input=True)
        except RuntimeError as err:
            if not used:
                raise ValueError(f"inception_weights: this pytorch-fid does not take a weights file "
                                 f"({_one_line(err)}); use pytorch-fid 0.3") from None
            raise ValueError(f"inception_weights: {path} does not match the FID Inception-v3 layout of "
                             f"pytorch-fid ({_one_line(err)})") from None
    if not used:
        raise ValueError("inception_weights: this pytorch-fid did not load the given file; use pytorch-fid 0.3")
    model = model.eval()
    return model.to(device) if device is not None else model


class _patched:
    """Context manager: ``setattr(obj, name, value)``, restored on exit."""

    def __init__(self, obj, name: str, value):
        self.obj, self.name, self.value = obj, name, value

    def __enter__(self):
        self.old = getattr(self.obj, self.name)
        setattr(self.obj, self.name, self.value)

    def __exit__(self, *exc):
        setattr(self.obj, self.name, self.old)


def _batched(model, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    device = next(model.parameters()).device
    with torch.no_grad():
        return torch.cat([model(c.to(device)).double().cpu() for c in torch.as_tensor(x).split(batch_size)])


class _Pool3(nn.Module):
    """(n, 1 or 3, H, W) in [0, 1] -> (n, 2048): grey repeated to RGB, pytorch-fid's resize and scaling."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        x = x.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.model(x)[-1].flatten(1)


def inception_features(x, model, batch_size: int = 50) -> torch.Tensor:
    """Pool3 features (n, 2048), float64, of images x: (n, 1 or 3, H, W) in [0, 1] (resized to 299x299)
    under ``model`` from ``load_inception``."""
    x = torch.as_tensor(np.asarray(x.detach().cpu()) if hasattr(x, "detach") else np.asarray(x))
    if x.ndim != 4 or x.shape[1] not in (1, 3) or len(x) == 0:
        raise ValueError(f"x: must be images of shape (n, 1 or 3, H, W) with n >= 1, got {tuple(x.shape)}")
    return _batched(_Pool3(model.eval()), x, check_int("batch_size", batch_size, minimum=1))


# ---------------------------------------------------------------------------- in-domain classifier

class DomainClassifier(nn.Module):
    """Small CNN: 2 x (3x3 conv, ReLU, 2x2 max-pool) -> 4x4 adaptive pool -> 128 (features) -> classes."""

    def __init__(self, channels: int, n_classes: int, width: int = 32, n_features: int = 128):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(2 * width * 16, n_features), nn.ReLU())
        self.head = nn.Linear(n_features, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _cache_dir(cache_dir) -> Path:
    return Path(cache_dir or os.environ.get("GENS_CACHE_DIR") or Path.home() / ".cache" / "gens")


def _as_images(x: np.ndarray, name: str) -> np.ndarray:
    if x.ndim == 2:  # flat data: square grey images only
        s = round(math.sqrt(x.shape[1]))
        if s * s != x.shape[1]:
            raise ValueError(f"{name}: flat data of {x.shape[1]} values are not square images")
        x = x.reshape(len(x), 1, s, s)
    if x.ndim != 4:
        raise ValueError(f"{name}: must be images (n, C, H, W), got shape {x.shape}")
    return x


def domain_classifier(source, cache_dir=None, epochs: int | None = None, seed: int = 0, limit: int | None = None,
                      progress=None) -> tuple[DomainClassifier, dict]:
    """The in-domain feature network for ``source`` (a ``gens.data`` source string): (model, info).

    Trained (Adam 1e-3, batch 128, 10% of the training split held out) on the labelled training split
    for ``epochs`` epochs (default: at least 5 epochs and 2000 minibatch steps: 5 on MNIST, 182 on
    the 8x8 digits), then cached as ``domain-fid-v1-<sha256 of the training data>.pt`` in
    ``cache_dir`` (``$GENS_CACHE_DIR`` or ``~/.cache/gens``): the key is the data's content, so the same
    data under another path reuses it and changed files retrain. ``info`` holds the held-out and
    test accuracy. A source without labels raises ValueError.
    """
    from gens.checkpoint import atomic_save, load_checkpoint
    from gens.data import load_dataset

    seed = check_int("seed", seed, minimum=0)
    x, y = load_dataset(source, "train", limit=limit)
    if y is None:
        raise ValueError(f"source: {source} has no labels, so no in-domain classifier can be trained; "
                         "use the Inception features (--features inception --inception-weights PATH)")
    x = _as_images(x, "source")
    steps_per_epoch = math.ceil((len(x) - max(1, len(x) // 10)) / 128)
    epochs = max(5, math.ceil(2000 / steps_per_epoch)) if epochs is None else check_int("epochs", epochs, minimum=1)
    digest = hashlib.sha256()
    for part in (np.ascontiguousarray(x), np.ascontiguousarray(y)):
        digest.update(str(part.shape).encode())
        digest.update(part.tobytes())
    key = f"domain-fid-v{DOMAIN_PROTOCOL}-{digest.hexdigest()[:20]}-e{epochs}-s{seed}"
    path = _cache_dir(cache_dir) / f"{key}.pt"
    n_classes = int(y.max()) + 1
    if path.is_file():
        saved = load_checkpoint(path)
        model = DomainClassifier(x.shape[1], n_classes)
        model.load_state_dict(saved["state_dict"])
        return model.eval(), {**saved["info"], "cache": str(path), "cached": True}
    model, info = _train_classifier(x, y, n_classes, epochs, seed, progress)
    try:
        xt, yt = load_dataset(source, "test")
        info["test_accuracy"] = _accuracy(model, _as_images(xt, "source"), yt)
    except ValueError:  # no test split
        info["test_accuracy"] = None
    info.update({"source": str(source), "data_shape": list(x.shape[1:]), "n_train": len(x)})
    atomic_save({"state_dict": model.state_dict(), "info": info}, path)
    return model, {**info, "cache": str(path), "cached": False}


def _accuracy(model, x, y) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(c).argmax(1) for c in torch.as_tensor(x).split(1000)])
    return float((pred.numpy() == np.asarray(y)).mean())


def _train_classifier(x, y, n_classes, epochs, seed, progress):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: a thread pool only slowed them down (10x on a busy machine)
    try:
        return _train_loop(x, y, n_classes, epochs, seed, progress)
    finally:
        torch.set_num_threads(threads)


def _train_loop(x, y, n_classes, epochs, seed, progress):
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=g)
    n_val = max(1, len(x) // 10)
    xt, yt = torch.as_tensor(x)[perm[n_val:]], torch.as_tensor(y).long()[perm[n_val:]]
    xv, yv = torch.as_tensor(x)[perm[:n_val]], np.asarray(y)[perm[:n_val].numpy()]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DomainClassifier(x.shape[1], n_classes)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(xt), generator=g).split(128):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
        model.eval()
        acc = _accuracy(model, xv, yv)
        if progress and ((epoch + 1) % max(1, epochs // 10) == 0 or epoch + 1 == epochs):
            progress(f"domain classifier epoch {epoch + 1}/{epochs}: held-out accuracy {acc:.4f}")
    return model.eval(), {"val_accuracy": acc, "epochs": epochs, "seed": seed, "n_classes": n_classes}


def domain_features(x, source, cache_dir=None, batch_size: int = 1000, **kwargs) -> torch.Tensor:
    """Penultimate-layer features (n, 128) of images x: (n, C, H, W) (or flat (n, H*W)) in [0, 1], from the
    cached in-domain classifier of ``source`` (trained on first use; ``kwargs`` go to ``domain_classifier``)."""
    model, _ = domain_classifier(source, cache_dir=cache_dir, **kwargs)
    x = torch.as_tensor(_as_images(np.asarray(x.detach().cpu() if hasattr(x, "detach") else x), "x"))
    conv = model.conv[0]
    if x.shape[1] != conv.in_channels:
        raise ValueError(f"x: has {x.shape[1]} channels, the classifier of {source} expects {conv.in_channels}")
    return _batched(_Features(model), x, check_int("batch_size", batch_size, minimum=1))


class _Features(nn.Module):
    def __init__(self, model: DomainClassifier):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.features(x)


def fid_score(x_real, x_fake, features) -> float:
    """FID between two image sets under ``features``: a callable images -> (n, d) features."""
    return fid_from_features(features(x_real), features(x_fake))
