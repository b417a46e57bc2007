"""DDP: every rank must hold the same m bank latents. Two CPU processes, gloo backend.

One ``torch.multiprocessing.spawn`` of 2 ranks (started the way a cluster launcher starts them: env
vars, ``LOCAL_RANK`` set) runs, in each rank:

1. ``LatentBank`` under a raw gloo process group: each rank encodes only its share of the samples (with
   a rank-specific encoder, so a rank that encoded everything itself would disagree) and the shares are
   gathered; queue pushes of different sizes per rank are gathered in rank order.
2. A ``GENModule`` trained by ``lightning.Trainer(strategy="ddp", accelerator="cpu", devices=2)``, once
   per bank mode; both ranks must end with identical banks built from the same training samples.
3. An ``AEModule`` trained the same way with ``gens.averaging.WeightAverage``: both ranks must end with the
   same averaged weights and the same latent Gaussian, fitted to all training samples (each rank encodes its
   share) by the averaged encoder.

Each rank writes what it holds to files; the tests compare them.
"""

from __future__ import annotations

import os
import socket

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

M, L_DIM = 11, 3  # 11 rows: an uneven split (6 + 5) across 2 ranks
MODES = ("refresh", "queue")


def _encoder(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Linear(5, L_DIM)


def _samples() -> torch.Tensor:
    return torch.randn(M, 5, generator=torch.Generator().manual_seed(7))


class SaveBank(L.Callback):
    """Write each rank's bank at the end of training."""

    def __init__(self, path):
        self.path = path

    def on_train_end(self, trainer, module):
        torch.save({"bank": module.bank.latents().cpu(), "idx": module._bank_idx, "batches": module._batches},
                   self.path.format(rank=trainer.global_rank))


def _raw_bank(rank: int, world: int, folder: str, port: int) -> None:
    from gens.bank import LatentBank

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        bank = LatentBank(M, L_DIM, "refresh")
        bank.refresh(_encoder(rank), _samples(), chunk_size=4)
        queue = LatentBank(6, L_DIM, "queue")
        queue.push(torch.full((3 - rank, L_DIM), float(rank)))  # rank 0: 3 rows of 0, rank 1: 2 rows of 1
        queue.push(torch.full((2, L_DIM), 10.0 + rank))
        torch.save({"refresh": bank.latents(), "queue": queue.latents()}, f"{folder}/raw{rank}.pt")
    finally:
        dist.destroy_process_group()


def _lightning(rank: int, world: int, folder: str, port: int, mode: str) -> None:
    from gens.data import GensDataModule
    from gens.methods import GENModule

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), NODE_RANK="0",
                      LOCAL_RANK=str(rank), RANK=str(rank))
    torch.manual_seed(0)  # every rank builds the same initial weights, as a launched script would
    x = torch.rand(240, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    module = GENModule((1, 4, 4), 2, hidden=[8], bandwidth=0.5, bank_size=40, bank_mode=mode, refresh_every=2)
    trainer = L.Trainer(strategy="ddp", accelerator="cpu", devices=world, max_steps=5, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, callbacks=[SaveBank(f"{folder}/{mode}{{rank}}.pt")])
    trainer.fit(module, datamodule=GensDataModule(x, batch_size=8, val_fraction=0.0))
    dist.destroy_process_group()


AE_X = torch.rand(37, 1, 4, 4, generator=torch.Generator().manual_seed(1))  # an uneven split across the ranks


class SaveModel(L.Callback):
    """Write each rank's parameters and buffers at the end of training (after the average is copied in)."""

    def __init__(self, path):
        self.path = path

    def on_train_end(self, trainer, module):
        torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()},
                   self.path.format(rank=trainer.global_rank))


def _averaged_ae(rank: int, world: int, folder: str, port: int) -> None:
    from gens.averaging import WeightAverage
    from gens.data import GensDataModule
    from gens.methods import AEModule

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), NODE_RANK="0",
                      LOCAL_RANK=str(rank), RANK=str(rank))
    torch.manual_seed(0)
    module = AEModule((1, 4, 4), 2, hidden=[8])
    trainer = L.Trainer(strategy="ddp", accelerator="cpu", devices=world, max_steps=5, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, callbacks=[WeightAverage(), SaveModel(f"{folder}/ae{{rank}}.pt")])
    trainer.fit(module, datamodule=GensDataModule(AE_X, batch_size=8, val_fraction=0.0))
    dist.destroy_process_group()


def _worker(rank: int, world: int, folder: str, ports: list[int]) -> None:
    _raw_bank(rank, world, folder, ports[0])
    for mode, port in zip(MODES, ports[1:]):
        _lightning(rank, world, folder, port, mode)
    _averaged_ae(rank, world, folder, ports[len(MODES) + 1])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, str(folder), [_free_port() for _ in range(len(MODES) + 2)]), nprocs=2, join=True)
    return folder


def _load(folder, name):
    return [torch.load(folder / f"{name}{r}.pt", weights_only=True) for r in (0, 1)]


def test_bank_refresh_is_gathered_across_ranks(ranks):
    r0, r1 = (d["refresh"] for d in _load(ranks, "raw"))
    torch.testing.assert_close(r0, r1, rtol=0, atol=0)
    with torch.no_grad():  # rank 0 encoded rows 0-5 with its encoder, rank 1 rows 6-10 with its own
        want = torch.cat([_encoder(0)(_samples()[:6]), _encoder(1)(_samples()[6:])])
    torch.testing.assert_close(r0, want)


def test_queue_push_is_gathered_in_rank_order(ranks):
    q0, q1 = (d["queue"] for d in _load(ranks, "raw"))
    torch.testing.assert_close(q0, q1, rtol=0, atol=0)
    # pushes: [0,0,0,1,1] then [10,10,11,11] -> 9 rows, the newest 6 kept
    torch.testing.assert_close(q0, torch.tensor([1.0, 1, 10, 10, 11, 11])[:, None].expand(6, L_DIM))


@pytest.mark.parametrize("mode", MODES)
def test_gen_ranks_hold_the_same_bank_after_ddp_training(ranks, mode):
    b0, b1 = _load(ranks, mode)
    assert b0["bank"].shape == (40, 2) and torch.isfinite(b0["bank"]).all()
    assert b0["batches"] == b1["batches"] == 5
    torch.testing.assert_close(b0["bank"], b1["bank"], rtol=0, atol=0)
    torch.testing.assert_close(b0["idx"], b1["idx"], rtol=0, atol=0)  # the same 40 training samples


def test_averaged_ae_ranks_agree_and_fit_all_training_latents(ranks):
    from gens.methods import AEModule

    s0, s1 = _load(ranks, "ae")
    assert s0.keys() == s1.keys()
    for k in s0:
        torch.testing.assert_close(s0[k], s1[k], rtol=0, atol=0, msg=k)
    module = AEModule((1, 4, 4), 2, hidden=[8])
    module.load_state_dict(s0)
    with torch.no_grad():
        z = module.encode(AE_X).double()
    torch.testing.assert_close(s0["latent_mean"], z.mean(0))
    cov = torch.cov(z.T, correction=0) + 1e-6 * torch.eye(2, dtype=torch.float64)
    torch.testing.assert_close(s0["latent_cov"], cov)
