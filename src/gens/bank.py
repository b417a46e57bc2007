"""The lagged bank of m latents that the GEN's KDE is built from (Algorithm 1, lines 3 and 12-13).

Two modes:

- ``"refresh"`` (the paper): the bank holds the encodings of m fixed training samples, re-encoded with
  the current encoder, without gradients, every ``kb`` minibatch updates (``LatentBank.refresh``).
- ``"queue"``: a FIFO of the detached latents of the most recent minibatches (``LatentBank.push``),
  as in momentum-contrast queues: no re-encoding, so about half the cost per epoch.

Under DDP (``torch.distributed`` initialised) every rank ends with the same m latents: in ``refresh``
each rank encodes its contiguous share of the m samples and the shares are all-gathered; in ``push``
the minibatch latents of all ranks are all-gathered (rank order) before they enter the queue. Without a
process group everything runs locally.

The bank is a plain object, not an ``nn.Module``: its tensor is not a module buffer, so DDP does not
broadcast it every step and checkpoints do not carry it (it is rebuilt at the start of training).
"""

from __future__ import annotations

import functools

import torch

from gens._validation import check_choice, check_int

__all__ = ["LatentBank", "all_gather_rows", "world", "sample_keys"]

MODES = ("refresh", "queue")


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x: (n_r, ...)`` over ranks in rank order; rows may differ per rank. Identity without DDP."""
    import torch.distributed as dist

    rank, size = world()
    if size == 1:
        return x
    n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    counts = [torch.zeros_like(n) for _ in range(size)]
    dist.all_gather(counts, n)
    counts = [int(c) for c in counts]
    top = max(counts)
    padded = x.new_zeros((top, *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:c] for p, c in zip(parts, counts)])


def sample_keys(x: torch.Tensor, chunk_size: int = 4096) -> torch.Tensor:
    """Content keys of samples x: (n, *shape) -> (n,) int64, equal for identical samples.

    Exact integer arithmetic on the float32 bit patterns (so the key of a sample does not depend on the
    batch it is computed in, or the device): a random linear combination of each value's two 16-bit halves.
    Distinct samples collide with tiny probability. Used to leave a query's own sample out of the bank.
    """
    d = 1
    for s in x.shape[1:]:
        d *= int(s)
    if d > 2**23:
        raise ValueError(f"x: samples of at most 2^23 values can be keyed, got {d}")
    coeff = _key_coefficients(d, x.device)
    out = []
    for c in x.reshape(x.shape[0], d).split(chunk_size):
        bits = c.to(torch.float32).contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
        out.append(((bits & 0xFFFF) * coeff[0]).sum(1) + ((bits >> 16) * coeff[1]).sum(1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64, device=x.device)


@functools.lru_cache(maxsize=8)
def _key_coefficients(d: int, device: torch.device) -> torch.Tensor:
    """The fixed (2, d) int64 coefficients of ``sample_keys`` on ``device`` (made once, not every step)."""
    g = torch.Generator().manual_seed(0x6E5)
    return torch.randint(1, 2**22, (2, d), generator=g, dtype=torch.int64).to(device)


class LatentBank:
    """A (size, dim) bank of detached latents.

    ``latents()`` -> (k, dim) with k <= size the filled rows (k = size once full). ``refresh(encoder, samples)``
    overwrites it with ``encoder(samples)``; ``push(z)`` appends minibatch latents, dropping the oldest.
    Rows are kept oldest first.
    """

    def __init__(self, size: int, dim: int, mode: str = "refresh"):
        self.size = check_int("bank_size", size, minimum=2)
        self.dim = check_int("latent_dim", dim, minimum=1)
        self.mode = check_choice("bank_mode", mode, MODES)
        self._z = torch.empty(0, self.dim)

    def __len__(self) -> int:
        return self._z.shape[0]

    @property
    def full(self) -> bool:
        return len(self) == self.size

    def latents(self) -> torch.Tensor:
        """The bank, (k, dim), oldest row first."""
        return self._z

    def to(self, device) -> "LatentBank":
        self._z = self._z.to(device)
        return self

    def clear(self) -> None:
        self._z = self._z[:0]

    @torch.no_grad()
    def refresh(self, encoder, samples: torch.Tensor, chunk_size: int = 2048) -> torch.Tensor:
        """Re-encode the bank: latents = encoder(samples), without gradients. samples: (size, *data_shape).

        The samples may live on the CPU; each chunk is moved to the encoder's device. Under DDP each rank
        encodes its contiguous share and the shares are gathered, so all ranks hold the same (size, dim).
        Returns the new bank.
        """
        if samples.shape[0] != self.size:
            raise ValueError(f"samples: must hold bank_size={self.size} rows, got {samples.shape[0]}")
        chunk_size = check_int("chunk_size", chunk_size, minimum=1)
        rank, ws = world()
        share = -(-self.size // ws)
        mine = samples[rank * share : (rank + 1) * share]
        device = _device_of(encoder)
        out = [encoder(c.to(device, non_blocking=True)).detach() for c in mine.split(chunk_size)]
        z = torch.cat(out) if out else torch.empty(0, self.dim, device=device)
        z = all_gather_rows(z.float())
        self._check(z)
        self._z = z
        return z

    @torch.no_grad()
    def push(self, z: torch.Tensor) -> torch.Tensor:
        """Append minibatch latents z: (n, dim) (detached; gathered over DDP ranks first), dropping the oldest."""
        z = all_gather_rows(z.detach().float())
        self._check(z)
        self._z = torch.cat([self._z.to(z.device), z])[-self.size :]
        return self._z

    def fill(self, z: torch.Tensor) -> None:
        """Set the bank to z: (size, dim) as given (no gathering; used by tests and checkpoint restores)."""
        z = z.detach().float()
        self._check(z)
        if z.shape[0] > self.size:
            raise ValueError(f"z: must hold at most bank_size={self.size} rows, got {z.shape[0]}")
        self._z = z

    def _check(self, z: torch.Tensor) -> None:
        if z.ndim != 2 or z.shape[1] != self.dim:
            raise ValueError(f"z: must have shape (n, {self.dim}), got {tuple(z.shape)}")


def _device_of(module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")
