"""Epoch time of gens' GEN against what users would otherwise pick: pythae's AAE and VAE (issue 7 item 3).

    pip install --no-deps pythae    # benchmark only, never a gens dependency (its other needs: pydantic>=2,
                                    # cloudpickle, imageio, tqdm; --no-deps keeps pip away from torch)
    python benchmarks/bench_pythae.py                     # 10000 MNIST images, batch 100, 3 timed rounds
    python benchmarks/bench_pythae.py --n 5000 --rounds 2 --methods pythae_aae gen_queue

Every method trains the same FC pair (gens.networks.MLPEncoder / MLPDecoder, 784-1000-1000-8; the VAE
and pythae's AAE encoder have a second 8-wide head for the log-variance, as pythae's API requires), batch
100, Adam lr 2e-4, betas (0.5, 0.999), on the same n MNIST training images, CPU, torch with --threads
threads, each through its library's own trainer and defaults, progress bars and console metrics off on both sides:

- pythae: ``VAE`` with ``BaseTrainer``, ``Adversarial_AE`` with ``AdversarialTrainer`` and, like gens' AAE,
  an MLP discriminator l -> 1000 -> 1000 -> 1 (``--pythae-default-disc``: pythae's own l -> 256 -> 1);
  no eval set, so pythae keeps a deep copy of the best-on-train model every epoch (its default).
- gens: ``gens.training.train`` (Lightning) for GEN (queue bank; refresh bank with kb = 10, m = n
  re-encoded), AAE, VAE and AE; no validation split, bandwidth 0.534 (h_opt for l = 8, m = 10^4).

An epoch is timed from the trainer's epoch-begin callback to its epoch-end callback (model building,
data setup, the GEN's initial bank encoding and pythae's final model save are outside). A round trains
every method for one epoch in a fresh trainer (order rotating); round 0 is a warm-up and is dropped.
Ratios are medians over rounds of the per-round ratio to pythae's AAE.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_step import load_mnist  # noqa: E402

GENS = {"gen_queue": ("gen", dict(bank_mode="queue")), "gen_refresh": ("gen", dict(bank_mode="refresh", refresh_every=10)),
        "aae": ("aae", {}), "vae": ("vae", {}), "ae": ("ae", {})}
PYTHAE = ("pythae_aae", "pythae_vae")
LR, BETAS, L_DIM, H = 2e-4, (0.5, 0.999), 8, 0.534


def pythae_run(name: str, x, epochs: int, default_disc: bool, out_dir: str) -> list[float]:
    """Train pythae's AAE or VAE for ``epochs`` epochs; return each epoch's seconds."""
    import torch
    from pythae.data.datasets import BaseDataset
    from pythae.models import VAE, Adversarial_AE, Adversarial_AE_Config, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseDiscriminator, BaseEncoder
    from pythae.trainers import AdversarialTrainer, AdversarialTrainerConfig, BaseTrainer, BaseTrainerConfig
    from pythae.trainers.training_callbacks import TrainingCallback

    from gens.networks import MLPDecoder, MLPEncoder, mlp

    for logger in list(logging.root.manager.loggerDict):  # pythae logs its configs at INFO on every run
        if logger.startswith("pythae"):
            logging.getLogger(logger).setLevel(logging.WARNING)

    class Encoder(BaseEncoder):
        def __init__(self):
            BaseEncoder.__init__(self)
            self.net = MLPEncoder((1, 28, 28), L_DIM, out_mult=2)

        def forward(self, x):
            mu, log_var = self.net(x).chunk(2, dim=1)
            return ModelOutput(embedding=mu, log_covariance=log_var)

    class Decoder(BaseDecoder):
        def __init__(self):
            BaseDecoder.__init__(self)
            self.net = MLPDecoder((1, 28, 28), L_DIM)

        def forward(self, z):
            return ModelOutput(reconstruction=self.net(z))

    class Discriminator(BaseDiscriminator):
        def __init__(self):
            BaseDiscriminator.__init__(self)
            self.net = mlp([L_DIM, 1000, 1000, 1])

        def forward(self, z):
            return ModelOutput(embedding=torch.sigmoid(self.net(z)))

    class Timer(TrainingCallback):
        def __init__(self):
            self.times, self.t0 = [], None

        def on_epoch_begin(self, training_config, **kw):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, training_config, **kw):
            self.times.append(time.perf_counter() - self.t0)

    data = BaseDataset(x, torch.zeros(x.shape[0]))
    timer = Timer()
    common = dict(output_dir=out_dir, num_epochs=epochs, per_device_train_batch_size=100, no_cuda=True)
    if name == "pythae_vae":
        model = VAE(VAEConfig(input_dim=(1, 28, 28), latent_dim=L_DIM, reconstruction_loss="mse"),
                    encoder=Encoder(), decoder=Decoder())
        cfg = BaseTrainerConfig(learning_rate=LR, optimizer_params={"betas": BETAS}, **common)
        trainer = BaseTrainer(model, data, training_config=cfg, callbacks=[timer])
    else:
        model = Adversarial_AE(Adversarial_AE_Config(input_dim=(1, 28, 28), latent_dim=L_DIM, reconstruction_loss="mse"),
                               encoder=Encoder(), decoder=Decoder(), discriminator=None if default_disc else Discriminator())
        cfg = AdversarialTrainerConfig(autoencoder_learning_rate=LR, discriminator_learning_rate=LR,
                                       autoencoder_optimizer_params={"betas": BETAS},
                                       discriminator_optimizer_params={"betas": BETAS}, **common)
        trainer = AdversarialTrainer(model, data, training_config=cfg, callbacks=[timer])
    from pythae.trainers.training_callbacks import MetricConsolePrinterCallback, ProgressBarCallback

    setup = trainer._setup_callbacks  # called again by train(): drop the console output callbacks after it

    def quiet_setup():
        setup()
        handler = trainer.callback_handler
        handler.callbacks = [c for c in handler.callbacks
                             if not isinstance(c, (ProgressBarCallback, MetricConsolePrinterCallback))]

    trainer._setup_callbacks = quiet_setup
    trainer.train()
    return timer.times


def gens_run(name: str, x, epochs: int) -> list[float]:
    """Train a gens method with gens.training.train (Lightning) for ``epochs`` epochs; each epoch's seconds."""
    import lightning as L

    from gens.training import train

    class Timer(L.Callback):
        def __init__(self):
            self.times, self.t0 = [], None

        def on_train_epoch_start(self, trainer, module):
            self.t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer, module):
            self.times.append(time.perf_counter() - self.t0)

    method, kw = GENS[name]
    if method == "gen":
        kw = dict(kw, bank_size=x.shape[0], bandwidth=H)
    timer = Timer()
    train(method, x, latent_dim=L_DIM, max_epochs=epochs, batch_size=100, lr=LR, betas=BETAS,
          datamodule_kwargs={"val_fraction": 0.0},
          trainer_kwargs={"accelerator": "cpu", "callbacks": [timer], "enable_progress_bar": False}, **kw)
    return timer.times


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=10000, help="MNIST training images (100 steps per epoch at 10000)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds (one epoch of every method each)")
    p.add_argument("--methods", nargs="+", default=["pythae_aae", "pythae_vae", "gen_queue", "gen_refresh", "aae", "vae", "ae"],
                   choices=[*PYTHAE, *GENS])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--pythae-default-disc", action="store_true", help="pythae's own l -> 256 -> 1 discriminator")
    args = p.parse_args(argv)

    import warnings

    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    try:
        import pythae  # noqa: F401
    except ImportError as err:
        raise SystemExit(f"pythae is not installed ({err}); pip install --no-deps pythae") from None
    logging.getLogger("lightning").setLevel(logging.WARNING)
    x = load_mnist(args.n)
    base = "pythae_aae" if "pythae_aae" in args.methods else args.methods[0]
    print(f"n={args.n} batch=100 FC 784-1000-1000-{L_DIM}, threads={args.threads}, cpus={os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    times = {k: [] for k in args.methods}
    names = list(args.methods)
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds + 1):
            for name in names[r % len(names):] + names[: r % len(names)]:
                if name in PYTHAE:
                    t = pythae_run(name, x, 1, args.pythae_default_disc, tmp)
                else:
                    t = gens_run(name, x, 1)
                if torch.get_num_threads() != args.threads:  # a trainer changed it: put it back, say so
                    print(f"note: {name} left torch with {torch.get_num_threads()} threads", flush=True)
                    torch.set_num_threads(args.threads)
                if r > 0:
                    times[name].append(t[0])
                print(f"round {r} {name}: {t[0]:.1f} s{' (warm-up)' if r == 0 else ''}", file=sys.stderr, flush=True)
    print(f"\nepoch seconds, median of {args.rounds} rounds; ratio = median per-round ratio to {base} "
          f"(load average now {os.getloadavg()[0]:.1f})")
    print(f"| method | epoch s | / {base} |\n|---|---|---|")
    for k in names:
        ratio = statistics.median(a / b for a, b in zip(times[k], times[base]))
        print(f"| {k} | {statistics.median(times[k]):.1f} | {ratio:.2f} |")
    return times


if __name__ == "__main__":
    main()
