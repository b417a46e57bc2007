"""FID with Inception-v3 features: pytorch-fid's network loaded from the user's weights file (random weights in
the package's format here), no download, one-line errors; and `gens evaluate fid --features inception` on a run."""

import pytest
import torch

from gens.evaluation import fid as fid_mod
from gens.evaluation.fid import inception_features, load_inception

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


# ------------------------------------------------------------------------- CLI on a run folder

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
