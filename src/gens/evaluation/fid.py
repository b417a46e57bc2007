"""Fréchet distance between feature distributions (FID, Table 3) and two feature extractors.

FID = ||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2}) between Gaussians fitted to features of
real and generated images. Features come from either

- ``InceptionV3FID``: the Inception-v3 network of the standard FID (TF 2015-12-05 graph as ported by
  pytorch-fid: 2048-d pool3 features), written here without torchvision. Its state_dict keys are
  torchvision's ``Inception3`` names with pytorch-fid's FID blocks, so the standard file
  ``pt_inception-2015-12-05-6726825d.pth`` loads into it (``load_inception``). Weights are never
  downloaded: the user supplies the file. Scores are comparable with published FIDs only with
  that file (and were not checked against it here: it cannot be downloaded on these machines).
- ``domain_features``: the penultimate layer (128-d) of a small CNN classifier that gens trains on
  the labelled training split of the data source and caches on disk, so FID works offline. Such
  scores are comparable between models on the same data, not with published Inception FIDs.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gens._validation import check_float, check_int, check_matrix

__all__ = ["frechet_distance", "feature_statistics", "fid_from_features", "InceptionV3FID", "load_inception",
           "inception_features", "DomainClassifier", "domain_classifier", "domain_features", "fid_score"]

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

class BasicConv2d(nn.Module):
    """conv (no bias) -> batch norm (eps 1e-3) -> ReLU; keys ``conv.*``, ``bn.*`` as in torchvision."""

    def __init__(self, cin: int, cout: int, **kw):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg3(x):  # the FID blocks average without counting the zero padding (TF's behaviour)
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x):
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg3(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, stride=2)], 1)


class FIDInceptionC(nn.Module):
    def __init__(self, cin: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for i in range(1, 6):
            bd = getattr(self, f"branch7x7dbl_{i}")(bd)
        return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(_avg3(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class FIDInceptionE(nn.Module):
    """InceptionE; ``pool="avg"`` is pytorch-fid's FIDInceptionE_1 (Mixed_7b), "max" its E_2 (Mixed_7c)."""

    def __init__(self, cin: int, pool: str):
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        pooled = _avg3(x) if self.pool == "avg" else F.max_pool2d(x, 3, stride=1, padding=1)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class InceptionV3FID(nn.Module):
    """Inception-v3 as used by FID: images (n, C, H, W) in [0, 1] -> pool3 features (n, 2048).

    Inputs are resized to 299x299 (bilinear), grey images repeated to RGB, and scaled to [-1, 1].
    ``fc`` (2048 -> 1008 logits) is kept only so the standard weights file loads with strict keys.
    """

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE(1280, pool="avg")
        self.Mixed_7c = FIDInceptionE(2048, pool="max")
        self.fc = nn.Linear(2048, 1008)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"x: must be images of shape (n, 1 or 3, H, W), got {tuple(x.shape)}")
        x = x.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2.0 * x - 1.0
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def load_inception(path) -> InceptionV3FID:
    """``InceptionV3FID`` with the weights in ``path`` (e.g. pt_inception-2015-12-05-6726825d.pth), in eval mode.

    Loaded with ``torch.load(weights_only=True)``. Every parameter and buffer must be in the file
    (only BatchNorm's ``num_batches_tracked`` counters may be missing) and nothing else may be.
    """
    from gens.checkpoint import load_checkpoint

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"inception_weights: no such file {path}; supply the FID Inception weights "
                         "(pt_inception-2015-12-05-6726825d.pth from pytorch-fid's releases)")
    state = load_checkpoint(path)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"inception_weights: {path} does not hold a state_dict")
    model = InceptionV3FID()
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"inception_weights: {path} does not match the FID Inception-v3 layout "
                         f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                         f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''})")
    return model.eval()


def _batched(model, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    device = next(model.parameters()).device
    with torch.no_grad():
        return torch.cat([model(c.to(device)).double().cpu() for c in torch.as_tensor(x).split(batch_size)])


def inception_features(x, model: InceptionV3FID, batch_size: int = 50) -> torch.Tensor:
    """Pool3 features (n, 2048) of images x: (n, C, H, W) in [0, 1]."""
    return _batched(model.eval(), torch.as_tensor(x), check_int("batch_size", batch_size, minimum=1))


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
        s = int(round(math.sqrt(x.shape[1])))
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
    info.update({"source": str(source), "data_shape": list(x.shape[1:]), "n_train": int(len(x))})
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
