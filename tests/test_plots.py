"""gens.plots: PNGs are written, decode to the expected pixel size, and hold the right content."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg
import numpy as np
import pytest
from scipy.stats import multivariate_normal
from sklearn.decomposition import PCA

from gens import plots


def test_make_grid_layout_and_content():
    rng = np.random.default_rng(0)
    imgs = rng.uniform(size=(5, 1, 4, 3))
    grid = plots.make_grid(imgs, nrow=2, pad=1)
    assert grid.shape == (3 * 5 + 1, 2 * 4 + 1, 1)
    # image i sits at row i // 2, column i % 2
    for i in range(5):
        r, c = divmod(i, 2)
        np.testing.assert_allclose(grid[1 + r * 5 : 1 + r * 5 + 4, 1 + c * 4 : 1 + c * 4 + 3, 0], imgs[i, 0])
    # the unused sixth cell and the padding are the pad value
    assert np.all(grid[11:15, 5:8] == 1.0) and np.all(grid[0] == 1.0)


def test_image_grid_png_decodes_to_expected_size(tmp_path):
    imgs = np.linspace(0, 1, 7 * 8 * 8).reshape(7, 1, 8, 8)
    path = plots.image_grid(imgs, tmp_path / "g.png", nrow=3, pad=2, scale=2)
    img = mpimg.imread(path)
    assert img.shape[:2] == ((3 * 10 + 2) * 2, (3 * 10 + 2) * 2)
    # grey values survive the round trip to 8 bits: first pixel of image 0 (after 2*2 padding pixels)
    np.testing.assert_allclose(img[4:20:2, 4:20:2, 0], imgs[0, 0], atol=0.6 / 255)


def test_image_grid_rgb_and_3d_input(tmp_path):
    rgb = np.random.default_rng(1).uniform(size=(4, 3, 5, 6))
    img = mpimg.imread(plots.image_grid(rgb, tmp_path / "rgb.png", nrow=4, pad=0))
    assert img.shape[:2] == (5, 24)
    np.testing.assert_allclose(img[:, :6, :3], rgb[0].transpose(1, 2, 0), atol=0.6 / 255)
    img = mpimg.imread(plots.image_grid(rgb[:, 0], tmp_path / "hw.png", pad=0))  # (n, H, W)
    assert img.shape[:2] == (2 * 5, 2 * 6)


def test_interpolation_grid_one_row_per_pair(tmp_path):
    x = np.random.default_rng(2).uniform(size=(3, 6, 1, 4, 4))
    img = mpimg.imread(plots.interpolation_grid(x, tmp_path / "i.png", pad=1))
    assert img.shape[:2] == (3 * 5 + 1, 6 * 5 + 1)


def test_bad_images_raise_value_error(tmp_path):
    with pytest.raises(ValueError, match="^images:"):
        plots.image_grid(np.zeros((2, 2, 4, 4)), tmp_path / "x.png")
    with pytest.raises(ValueError, match="^images:"):
        plots.image_grid(np.zeros((4, 16)), tmp_path / "x.png")
    with pytest.raises(ValueError, match="^nrow:"):
        plots.image_grid(np.zeros((4, 1, 4, 4)), tmp_path / "x.png", nrow=0)


def test_project_2d_matches_pca_and_identity_for_l2():
    z = np.random.default_rng(3).normal(size=(200, 5)) * np.array([3.0, 2.0, 1.0, 0.5, 0.1])
    z2, center, comps = plots.project_2d(z)
    ref = PCA(2).fit(z)
    np.testing.assert_allclose(np.abs(comps @ ref.components_.T), np.eye(2), atol=1e-8)
    np.testing.assert_allclose(np.abs(z2), np.abs(ref.transform(z)), atol=1e-8)
    np.testing.assert_allclose(comps @ comps.T, np.eye(2), atol=1e-12)
    w = z[:, :2]
    w2, c, v = plots.project_2d(w)
    np.testing.assert_array_equal(w2, w)


def test_mixture_density_2d_matches_scipy():
    rng = np.random.default_rng(4)
    pts = rng.normal(size=(50, 2))
    means = np.array([[0.0, 0.0], [1.0, -1.0]])
    covs = np.array([[[1.0, 0.3], [0.3, 0.5]], [[0.2, 0.0], [0.0, 2.0]]])
    w = np.array([0.3, 0.7])
    ref = sum(wk * multivariate_normal(m, c).pdf(pts) for wk, m, c in zip(w, means, covs))
    np.testing.assert_allclose(plots._mixture_density_2d(pts, w, means, covs), ref, rtol=1e-12)


@pytest.mark.parametrize("l", [1, 2, 6])
def test_latent_scatter_writes_png(tmp_path, l):
    rng = np.random.default_rng(5)
    z = rng.normal(size=(300, l))
    labels = rng.integers(0, 10, 300)
    means, covs = np.zeros((1, l)), np.eye(l)[None]
    path = plots.latent_scatter(z, tmp_path / "lat.png", labels=labels, weights=[1.0], means=means, covs=covs)
    img = mpimg.imread(path)
    assert img.shape[:2] == (500, 550)
    # no target, no labels
    img = mpimg.imread(plots.latent_scatter(z, tmp_path / "plain.png"))
    assert img.shape[:2] == (500, 550)
    with pytest.raises(ValueError, match="^labels:"):
        plots.latent_scatter(z, tmp_path / "bad.png", labels=labels[:5])


def _write_metrics(path):
    path.write_text(
        "epoch,step,train/loss_step,train/recon,val/recon,val/loss\n"
        "0,9,0.5,0.4,,\n"
        "0,19,0.3,0.25,,\n"
        "0,19,,,0.22,0.31\n"
        "1,29,0.2,0.15,,\n"
        "1,39,,,0.12,0.2\n"
    )
    return path


def test_read_metrics_csv_keeps_set_values(tmp_path):
    series = plots.read_metrics_csv(_write_metrics(tmp_path / "metrics.csv"))
    assert set(series) == {"train/loss_step", "train/recon", "val/recon", "val/loss"}
    steps, values = series["val/recon"]
    np.testing.assert_array_equal(steps, [19, 39])
    np.testing.assert_allclose(values, [0.22, 0.12])
    np.testing.assert_array_equal(series["train/recon"][0], [9, 19, 29])


def test_read_metrics_csv_resumed_run_keeps_last_value_per_step(tmp_path):
    path = _write_metrics(tmp_path / "metrics.csv")
    with open(path, "a") as f:  # a resumed run logs steps 29 and 39 again after those of the first process
        f.write("1,29,0.21,0.16,,\n1,39,,,0.11,0.19\n")
    series = plots.read_metrics_csv(path)
    np.testing.assert_array_equal(series["train/recon"][0], [9, 19, 29])
    np.testing.assert_allclose(series["train/recon"][1], [0.4, 0.25, 0.16])
    np.testing.assert_allclose(series["val/recon"][1], [0.22, 0.11])


def test_loss_curves_writes_png(tmp_path):
    path = plots.loss_curves(_write_metrics(tmp_path / "metrics.csv"), tmp_path / "losses.png")
    img = mpimg.imread(path)
    # two groups (loss, recon) -> 2 panels of 420 x 320 pixels
    assert img.shape[:2] == (320, 840)
    empty = tmp_path / "empty.csv"
    empty.write_text("epoch,step\n")
    with pytest.raises(ValueError, match="^metrics_csv:"):
        plots.loss_curves(empty, tmp_path / "none.png")
