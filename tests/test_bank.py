"""LatentBank: refresh re-encodes without gradients, the queue is a FIFO of detached latents."""

from __future__ import annotations

import pytest
import torch

from gens.bank import LatentBank, all_gather_rows, world


def test_refresh_equals_encoder_output_without_grad():
    torch.manual_seed(0)
    enc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    x = torch.rand(50, 1, 3, 4)
    bank = LatentBank(50, 3, "refresh")
    z = bank.refresh(enc, x, chunk_size=7)  # chunks of 7 must give the same rows in order
    assert z.shape == (50, 3) and not z.requires_grad and z.grad_fn is None
    torch.testing.assert_close(bank.latents(), enc(x).detach())
    with torch.no_grad():
        enc[1].weight.mul_(2.0)
    bank.refresh(enc, x)  # overwrites with the new encoder's output
    torch.testing.assert_close(bank.latents(), enc(x).detach())
    assert len(bank) == 50 and bank.full
    with pytest.raises(ValueError, match="samples: must hold bank_size=50 rows"):
        bank.refresh(enc, x[:10])


def test_queue_is_fifo_of_detached_latents():
    bank = LatentBank(5, 2, "queue")
    assert len(bank) == 0 and not bank.full
    rows = torch.arange(16, dtype=torch.float32).view(8, 2).requires_grad_()
    bank.push(rows[:3] * 1.0)
    torch.testing.assert_close(bank.latents(), rows[:3].detach())
    bank.push(rows[3:6] * 1.0)  # 6 rows pushed into 5 slots: the oldest (row 0) goes
    torch.testing.assert_close(bank.latents(), rows[1:6].detach())
    bank.push(rows[6:8] * 1.0)
    torch.testing.assert_close(bank.latents(), rows[3:8].detach())
    assert bank.full and not bank.latents().requires_grad
    bank.push(torch.full((7, 2), -1.0))  # more than the size at once: keep the newest 5
    torch.testing.assert_close(bank.latents(), torch.full((5, 2), -1.0))


def test_fill_clear_and_bad_input():
    bank = LatentBank(4, 2, "queue")
    bank.fill(torch.ones(3, 2))
    assert len(bank) == 3
    bank.clear()
    assert len(bank) == 0
    with pytest.raises(ValueError, match=r"z: must have shape \(n, 2\)"):
        bank.push(torch.ones(3, 5))
    with pytest.raises(ValueError, match="z: must hold at most bank_size=4"):
        bank.fill(torch.ones(6, 2))
    with pytest.raises(ValueError, match="bank_size: must be an integer >= 2"):
        LatentBank(1, 2)
    with pytest.raises(ValueError, match="bank_mode: must be one of 'refresh', 'queue'"):
        LatentBank(10, 2, "fifo")


def test_without_process_group_gathering_is_identity():
    assert world() == (0, 1)
    x = torch.randn(4, 3)
    assert all_gather_rows(x) is x
