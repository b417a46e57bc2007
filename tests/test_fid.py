"""FID: the Fréchet distance against closed forms, the Inception-v3 loading path, in-domain features."""

import math

import numpy as np
import pytest
import torch

from gens.evaluation import fid as fid_mod
from gens.evaluation.fid import (
    domain_classifier,
    domain_features,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    inception_features,
    load_inception,
)


def _spd(d, seed, rank=None):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, rank or d))
    return a @ a.T + (0 if rank else 0.1 * np.eye(d))


def _sym_sqrt(s):
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


# ------------------------------------------------------------------------------------ the distance

def test_diagonal_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    ref = ((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum()
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(ref, rel=1e-10)


def test_one_dimensional_closed_form():
    # W2^2 between N(m1, v1) and N(m2, v2): (m1 - m2)^2 + (sqrt v1 - sqrt v2)^2
    assert frechet_distance([1.0], [[4.0]], [-0.5], [[0.25]]) == pytest.approx(1.5**2 + 1.5**2, rel=1e-12)


def test_general_covariances_against_symmetric_form():
    """tr (S1 S2)^{1/2} = tr (S1^{1/2} S2 S1^{1/2})^{1/2}, computed here with eigh only."""
    d = 5
    s1, s2 = _spd(d, 1), _spd(d, 2)
    mu1, mu2 = np.arange(d, dtype=float), np.zeros(d)
    r1 = _sym_sqrt(s1)
    ref = mu1 @ mu1 + np.trace(s1) + np.trace(s2) - 2 * np.trace(_sym_sqrt(r1 @ s2 @ r1))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-9)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-9)


def test_singular_covariances_stay_finite_and_close():
    d = 6
    s1, s2 = _spd(d, 3, rank=2), _spd(d, 4, rank=3)  # rank-deficient: sqrtm of a singular product
    mu = np.zeros(d)
    r1 = _sym_sqrt(s1)
    ref = np.trace(s1) + np.trace(s2) - 2 * np.trace(_sym_sqrt(r1 @ s2 @ r1))
    value = frechet_distance(mu, s1, mu, s2)
    assert math.isfinite(value)
    assert value == pytest.approx(ref, rel=1e-4, abs=1e-4)


def test_feature_statistics_and_fid_from_features():
    rng = np.random.default_rng(5)
    f = rng.normal(size=(200, 4)) * [1, 2, 3, 4] + 1
    mu, sigma = feature_statistics(torch.as_tensor(f))
    np.testing.assert_allclose(mu, f.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(f, rowvar=False), rtol=1e-12)
    # large samples of two Gaussians: the plug-in FID approaches the population value
    g = rng.normal(size=(20000, 3)) * [1, 1, 2]
    h = rng.normal(size=(20000, 3)) + [0.5, 0, 0]
    pop = 0.25 + (2 - 1) ** 2
    assert fid_from_features(g, h) == pytest.approx(pop, abs=0.05)


def test_distance_input_checks():
    with pytest.raises(ValueError, match="^mu1: "):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="^sigma2: must be a \\(2, 2\\)"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(3))
    with pytest.raises(ValueError, match="^features: "):
        feature_statistics(np.zeros((1, 3)))


# -------------------------------------------------------------------------------------- Inception

def _pytorch_fid():
    return pytest.importorskip("pytorch_fid.inception", reason="pytorch-fid not installed (pip install 'gens[fid]')")


def _package_network(seed=0):
    """pytorch-fid's FID Inception-v3 (what its fid_inception_v3() builds before it loads the weights), with
    random weights and non-trivial BatchNorm statistics so that a wrong mapping would show."""
    inc = _pytorch_fid()
    torch.manual_seed(seed)
    net = inc._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = inc.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = inc.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = inc.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = inc.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = inc.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = inc.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = inc.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = inc.FIDInceptionE_1(1280)
    net.Mixed_7c = inc.FIDInceptionE_2(2048)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.fixture(scope="module")
def fid_weights(tmp_path_factory):
    """(path, network): random weights saved as pt_inception-2015-12-05-6726825d.pth's layout (no
    num_batches_tracked counters, a plain dict of tensors)."""
    net = _package_network()
    # torchvision's Inception3 has 27,161,264 parameters with the aux classifier (3,326,696) and a
    # 1000-way fc; the FID network has no aux and a 1008-way fc: 27,161,264 - 3,326,696 + 8 * 2049
    assert sum(p.numel() for p in net.parameters()) == 27_161_264 - 3_326_696 + 8 * 2049
    assert net.state_dict()["fc.weight"].shape == (1008, 2048)
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path_factory.mktemp("weights") / fid_mod.FID_WEIGHTS_FILE
    torch.save(state, path)
    return path, net


def _reference_pool3(net, x):
    """pool3 of the package-format network run directly: grey -> RGB, bilinear 299x299, [0, 1] -> [-1, 1]."""
    out = {}
    hook = net.avgpool.register_forward_hook(lambda m, i, o: out.setdefault("pool3", o.flatten(1)))
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    with torch.no_grad():
        net(2 * torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) - 1)
    hook.remove()
    return out["pool3"].double()


def _no_network(monkeypatch):
    import socket
    import urllib.request

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_inception_weights_round_trip(fid_weights, monkeypatch, tmp_path):
    inc = _pytorch_fid()
    path, net = fid_weights
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # an empty hub cache
    _no_network(monkeypatch)
    original = inc.load_state_dict_from_url
    model = load_inception(path)
    assert isinstance(model, inc.InceptionV3) and not model.training
    assert inc.load_state_dict_from_url is original  # the package is left as it was
    loaded_bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    saved_bn = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(loaded_bn) == len(saved_bn) == 94
    for a, b in zip(loaded_bn, saved_bn):
        assert torch.equal(a.running_mean, b.running_mean) and torch.equal(a.running_var, b.running_var)
    x = torch.rand(3, 3, 20, 24, generator=torch.Generator().manual_seed(1))
    f = inception_features(x, model)
    assert f.shape == (3, 2048) and f.dtype == torch.float64
    assert torch.isfinite(f).all() and (f >= 0).all()  # pooled ReLU outputs
    assert not torch.equal(f[0], f[1])
    torch.testing.assert_close(f, _reference_pool3(net, x), rtol=1e-5, atol=1e-6)
    # deterministic, and independent of the batching
    assert torch.equal(inception_features(x, model), f)
    torch.testing.assert_close(inception_features(x, model, batch_size=1), f, rtol=1e-5, atol=1e-6)
    # grey images are the RGB image with the channel repeated; numpy input is accepted
    g = x[:2, :1]
    torch.testing.assert_close(inception_features(g.numpy(), model), inception_features(g.expand(-1, 3, -1, -1), model))


def test_inception_from_a_folder_and_the_hub_cache(fid_weights, monkeypatch, tmp_path):
    _pytorch_fid()
    path, _ = fid_weights
    _no_network(monkeypatch)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    with pytest.raises(ValueError, match="^inception_weights: no weights file given and .*torch-home/hub/"
                       "checkpoints/pt_inception-2015-12-05-6726825d.pth not found") as err:
        load_inception()
    assert "\n" not in str(err.value)
    cache = tmp_path / "torch-home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / fid_mod.FID_WEIGHTS_FILE).symlink_to(path)
    assert fid_mod.inception_weights_path() == cache / fid_mod.FID_WEIGHTS_FILE
    assert fid_mod.inception_weights_path(path.parent) == path  # a folder holding the file
    model = load_inception()  # from the hub cache, without a download
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(inception_features(x, model), inception_features(x, load_inception(path.parent)))


def test_inception_weights_with_counters_and_wrapped(fid_weights, tmp_path):
    _pytorch_fid()
    _, net = fid_weights
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    ref = _reference_pool3(net, x)
    torch.save(net.state_dict(), tmp_path / "full.pth")  # with num_batches_tracked, as torch saves it
    torch.testing.assert_close(inception_features(x, load_inception(tmp_path / "full.pth")), ref,
                               rtol=1e-5, atol=1e-6)
    torch.save({"state_dict": net.state_dict()}, tmp_path / "wrapped.pth")
    torch.testing.assert_close(inception_features(x, load_inception(tmp_path / "wrapped.pth")), ref,
                               rtol=1e-5, atol=1e-6)


def test_inception_loading_rejects_wrong_files(fid_weights, tmp_path):
    _pytorch_fid()
    path, net = fid_weights
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    cases = {
        "missing": {k: v for k, v in state.items() if k != "Mixed_7c.branch_pool.conv.weight"},
        "extra": {**state, "AuxLogits.fc.weight": torch.zeros(1000, 768)},
        "torchvision": {**state, "fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)},
        "other": {"conv.weight": torch.zeros(1)},
    }
    for name, bad in cases.items():
        torch.save(bad, tmp_path / f"{name}.pth")
        with pytest.raises(ValueError, match="^inception_weights: .*does not match the FID Inception-v3") as err:
            load_inception(tmp_path / f"{name}.pth")
        assert "\n" not in str(err.value), name
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="^inception_weights: .*text.pth is not a PyTorch weights file"):
        load_inception(tmp_path / "text.pth")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(ValueError, match="^inception_weights: .*does not hold a state_dict"):
        load_inception(tmp_path / "tensor.pth")
    with pytest.raises(ValueError, match="^inception_weights: .*absent.pth not found; put "
                       "pt_inception-2015-12-05-6726825d.pth there or in \\$TORCH_HOME/hub/checkpoints") as err:
        load_inception(tmp_path / "absent.pth")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="^inception_weights: .*not found"):  # a folder without the file
        load_inception(tmp_path)
    model = load_inception(path)
    for bad in (torch.zeros(1, 2, 8, 8), torch.zeros(8, 8), torch.zeros(0, 3, 8, 8)):
        with pytest.raises(ValueError, match="^x: must be images"):
            inception_features(bad, model)
    with pytest.raises(ValueError, match="^batch_size: "):
        inception_features(torch.zeros(1, 3, 8, 8), model, batch_size=0)


def test_inception_without_the_extra(fid_weights, monkeypatch, tmp_path):
    import sys

    path, _ = fid_weights
    monkeypatch.setitem(sys.modules, "pytorch_fid", None)  # import pytorch_fid now fails
    monkeypatch.setitem(sys.modules, "pytorch_fid.inception", None)
    msg = "inception_weights: needs the optional extra: pip install 'gens[fid]'"
    for where in (path, tmp_path / "absent.pth", None):  # the missing extra is said first
        with pytest.raises(ValueError) as err:
            load_inception(where)
        assert str(err.value) == msg


def test_reproduce_checks_the_inception_file_before_training(fid_weights, monkeypatch, tmp_path):
    import sys

    from gens.reproduce import Options, _validate

    _pytorch_fid()
    path, _ = fid_weights
    assert _validate("table3", Options(inception_weights=str(path))) == ("table3",)
    assert _validate("table3", Options(inception_weights=str(path.parent))) == ("table3",)  # its folder
    with pytest.raises(ValueError, match="^inception_weights: .*absent.pth not found; put "):
        _validate("table3", Options(inception_weights=str(tmp_path / "absent.pth")))
    monkeypatch.setitem(sys.modules, "pytorch_fid", None)
    monkeypatch.setitem(sys.modules, "pytorch_fid.inception", None)
    with pytest.raises(ValueError, match="^inception_weights: needs the optional extra: pip install 'gens\\[fid\\]'$"):
        _validate("table3", Options(inception_weights=str(path)))
    assert _validate("table3", Options()) == ("table3",)  # in-domain features need no extra


def test_everything_else_works_without_the_extra(tmp_path):
    """In a fresh interpreter where pytorch_fid and torchvision cannot be imported: gens, the FID distance
    and the CLI work, and `gens evaluate fid --features inception` says what to install in one line."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['pytorch_fid'] = None; sys.modules['torchvision'] = None\n"
        "import numpy as np, gens, gens.evaluation.fid as F, gens.cli.evaluate\n"
        "r = np.random.default_rng(0)\n"
        "assert abs(F.fid_from_features(r.normal(size=(4000, 2)), r.normal(size=(4000, 2)) + [1, 0]) - 1) < 0.1\n"
        "from gens.cli import main\n"
        "sys.exit(main(['evaluate', 'fid', 'no-such-run', '--features', 'inception']))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines()[-1].endswith("inception_weights: needs the optional extra: "
                                                        "pip install 'gens[fid]'")


# ----------------------------------------------------------------------------------- domain features

@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    model, info = domain_classifier("digits", cache_dir=cache, epochs=20)
    return cache, model, info


def test_domain_classifier_trains_and_caches(digits_cache, monkeypatch):
    cache, model, info = digits_cache
    assert not info["cached"] and info["test_accuracy"] > 0.85
    files = list(cache.glob("domain-fid-v1-*.pt"))
    assert len(files) == 1
    monkeypatch.setattr(fid_mod, "_train_classifier", lambda *a: pytest.fail("retrained despite the cache"))
    again, info2 = domain_classifier("digits", cache_dir=cache, epochs=20)
    assert info2["cached"] and info2["test_accuracy"] == info["test_accuracy"]
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v)


def test_domain_fid_separates_real_from_altered(digits_cache):
    from gens.data import load_dataset

    cache, _, _ = digits_cache
    kw = {"cache_dir": cache, "epochs": 20}
    x = torch.as_tensor(load_dataset("digits", "train")[0])
    f = domain_features(x, "digits", **kw)
    assert f.shape == (len(x), 128) and f.dtype == torch.float64
    h = 700  # n well above the 128 feature dimensions, so the plug-in covariances are usable
    same = fid_from_features(f[:h], f[h:2 * h])  # two halves of one distribution (10.3 at this seed)
    altered = {
        "blurred": 0.5 * x[h:2 * h] + 0.5 * x[h:2 * h].mean(),
        "shifted": torch.roll(x[h:2 * h], 2, -1),
        "noise": torch.rand(h, 1, 8, 8, generator=torch.Generator().manual_seed(0)),
    }
    for name, xa in altered.items():  # each about 250-360 at this seed
        assert fid_from_features(f[:h], domain_features(xa, "digits", **kw)) > 10 * same, name
    assert fid_from_features(f[:h], f[:h]) == pytest.approx(0.0, abs=1e-6)
    # flat input of square images is accepted
    flat = domain_features(x[:5].reshape(5, 64), "digits", **kw)
    assert torch.allclose(flat, f[:5])


def test_domain_features_need_labels(tmp_path):
    path = tmp_path / "imgs.npy"
    np.save(path, np.zeros((20, 8, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match="^source: .* no labels"):
        domain_classifier(str(path), cache_dir=tmp_path)


# --------------------------------------------------------------------------- CLI on a run folder

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from gens.runs import resolve_config, train_run

    run = tmp_path_factory.mktemp("run") / "ae"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_run(resolve_config({"method": "ae", "data": "digits", "epochs": 1, "hidden": [16], "latent_dim": 3}),
                  run, progress=False)
    finally:
        torch.set_num_threads(threads)
    return run


def test_cli_fid_on_a_run(tiny_run, digits_cache, tmp_path, capsys):
    import json

    from gens.cli import main
    from gens.data import load_dataset
    from gens.runs import load_run

    cache, _, _ = digits_cache
    out = tmp_path / "fid.json"
    assert main(["evaluate", "fid", str(tiny_run), "--n", "150", "--cache-dir", str(cache),
                 "--classifier-epochs", "20", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "cached" in text and "generated vs test" in text
    res = json.loads(out.read_text())
    # recompute: the same 150 generated samples (seed 0) and the first 150 test images
    module, _ = load_run(tiny_run)
    with torch.no_grad():
        fake = module.sample(150, generator=torch.Generator().manual_seed(0)).float().clamp(0, 1)
    real = torch.as_tensor(load_dataset("digits", "test")[0][:150])
    kw = {"cache_dir": cache, "epochs": 20}
    expected = fid_from_features(domain_features(real, "digits", **kw), domain_features(fake, "digits", **kw))
    assert res["fid"] == pytest.approx(expected, rel=1e-6)
    assert 0 < res["fid_train_vs_test"] < res["fid"]  # a 1-epoch AE's samples are far from real digits


def test_cli_fid_inception_on_a_run(tiny_run, fid_weights, tmp_path, monkeypatch, capsys):
    """`gens evaluate fid --features inception`: pytorch-fid's network with the given file, on the run's samples
    and test images (the Fréchet distance of 2048-d features is replaced by a recorder: sqrtm of two
    2048 x 2048 matrices takes ~30 s on one core, and the distance is tested above)."""
    import argparse
    import json

    from gens.cli import main
    from gens.cli.evaluate import _fid, add_arguments
    from gens.data import load_dataset
    from gens.runs import load_run

    path, net = fid_weights
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # an empty hub cache
    p = argparse.ArgumentParser()
    add_arguments(p)
    with pytest.raises(ValueError, match="^inception_weights: no weights file given"):
        _fid(p.parse_args(["fid", str(tiny_run), "--features", "inception"]))
    _pytorch_fid()
    _no_network(monkeypatch)
    seen = []
    monkeypatch.setattr(fid_mod, "fid_from_features", lambda a, b: seen.append((a, b)) or 1.5)
    out = tmp_path / "fid.json"
    assert main(["evaluate", "fid", str(tiny_run), "--features", "inception", "--inception-weights", str(path),
                 "--n", "3", "--no-baseline", "--batch-size", "2", "--json", str(out)]) == 0
    assert "FID (inception features, n = 3): generated vs test = 1.500" in capsys.readouterr().out
    assert json.loads(out.read_text())["features"] == "inception"
    (f_real, f_fake), = seen
    module, _ = load_run(tiny_run)
    with torch.no_grad():
        fake = module.sample(3, generator=torch.Generator().manual_seed(0)).float().clamp(0, 1)
    real = torch.as_tensor(load_dataset("digits", "test")[0][:3])
    torch.testing.assert_close(f_real, _reference_pool3(net, real.float()), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(f_fake, _reference_pool3(net, fake.reshape(3, 1, 8, 8)), rtol=1e-5, atol=1e-6)


def test_cli_entropy_on_a_run(tiny_run, capsys):
    import json

    from gens.cli import main
    from gens.evaluation.entropy import latent_entropy
    from gens.runs import load_run, run_split
    from gens.training import encode_all

    out = tiny_run / "entropy.json"
    assert main(["evaluate", "entropy", str(tiny_run), "--samples", "360", "--json", str(out)]) == 0
    assert "| 360 |" in capsys.readouterr().out
    res = json.loads(out.read_text())
    module, cfg = load_run(tiny_run)
    z = encode_all(module.eval(), run_split(cfg, "test")[0]).double()
    assert res["rows"][0]["encoded"][0] == pytest.approx(latent_entropy(z), rel=1e-9)
    assert res["latent_dim"] == 3 and res["rows"][0]["normal"][0] > res["rows"][0]["encoded"][0]
