"""The lagged bank of m latents that the GEN's KDE is built from (Algorithm 1, lines 3 and 12-13).

``LatentBank`` stores the (m, l) detached latents; a *bank strategy* (a ``BankStrategy`` subclass, looked
up by the GEN's ``bank_mode`` in ``BANKS``, ``gens.registry``) decides how they are filled and kept: set-up
when training starts, the per-step refresh or push, the rows a query may not see (``leave_one_out``) and
the checkpoint state. The built-ins:

- ``"refresh"`` (the paper, ``RefreshBank``): the bank holds the encodings of m fixed training samples,
  re-encoded with the current encoder, without gradients, every ``kb`` minibatch updates
  (``LatentBank.refresh``); a minibatch's own samples are matched by content (``sample_keys``).
- ``"queue"`` (``QueueBank``): a FIFO of the detached latents of the most recent minibatches
  (``LatentBank.push``), as in momentum-contrast queues: no re-encoding, so about half the cost per epoch.
- ``"ema-queue"`` (``EMAQueueBank``): a queue filled by a moving-average copy of the encoder, as momentum
  contrast's key encoder: one extra no-grad forward of the minibatch per step.

``register_bank(name, cls)`` adds a strategy; ``GENModule(bank_mode=name)``, ``gens.GEN(bank_mode=name)``
and ``gens train --bank-mode name`` then accept it.

Under DDP (``torch.distributed`` initialised) every rank ends with the same m latents: in ``refresh``
each rank encodes its contiguous share of the m samples and the shares are all-gathered; in ``push``
the minibatch latents of all ranks are all-gathered (rank order) before they enter the queue; the
training samples a strategy draws are rank 0's (broadcast). Without a process group everything runs locally.

The bank is a plain object, not an ``nn.Module``: its tensor is not a module buffer, so DDP does not
broadcast it every step; checkpoints carry it through the strategy's ``state_dict`` (``GENModule``'s
``gen_bank`` entry), so a resumed run continues exactly.
"""

from __future__ import annotations

import functools

import torch

from gens._distributed import all_gather_rows, world
from gens._validation import check_int
from gens.registry import BANKS

__all__ = ["BANKS", "BankStrategy", "EMAQueueBank", "LatentBank", "QueueBank", "RefreshBank", "all_gather_rows", "register_bank",
           "sample_keys", "world"]

MODES = BANKS.builtins  # the built-in strategies ("refresh", "queue")


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
    Rows are kept oldest first. ``mode``: a label, a registered bank strategy's name (None: none); how the
    rows are kept is the strategy's business (``BankStrategy``), not the storage's.
    """

    def __init__(self, size: int, dim: int, mode: str | None = None):
        self.size = check_int("bank_size", size, minimum=2)
        self.dim = check_int("latent_dim", dim, minimum=1)
        self.mode = None if mode is None else BANKS.check(mode)
        self._z = torch.empty(0, self.dim)

    def __len__(self) -> int:
        return self._z.shape[0]

    @property
    def full(self) -> bool:
        return len(self) == self.size

    def latents(self) -> torch.Tensor:
        """The bank, (k, dim), oldest row first."""
        return self._z

    def to(self, device) -> LatentBank:
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


def _near(x: torch.Tensor, device, budget: int = 2**28) -> torch.Tensor:
    """x on ``device`` when it takes at most ``budget`` bytes there (else it stays put and moves per chunk)."""
    return x.to(device) if x.numel() * x.element_size() <= budget else x


# ------------------------------------------------------------------------------------------- strategies


class BankStrategy:
    """How the GEN's bank is built and kept. Subclass it, override the hooks that differ, ``register_bank``.

    ``GENModule`` makes one per module as ``cls(bank_size, latent_dim)`` and calls the hooks below with
    itself as ``gen`` (its ``encoder``, ``device``, ``current_epoch``, options ``refresh_every`` and
    ``bank_reshuffle``, and ``_batches``: the training batches done so far). The base class keeps the bank
    as the encodings of m training samples drawn at random when training starts, re-encoded only then;
    every query sees every row (its ``keys`` stay unknown).

    Attributes: ``bank`` (the ``LatentBank``), ``source`` ((n_train, getter(index tensor) -> samples), or
    (None, None) when the data give no random access), ``indices`` ((m,) the samples' indices), ``samples``
    ((m, *data_shape) those samples).
    """

    needs_samples = False  # True: training refuses data without random access to the samples (ValueError)

    def __init__(self, size: int, dim: int):
        self.bank = LatentBank(size, dim)
        self.source = (None, None)
        self.indices = None
        self.samples = None
        self.keys = None  # (k,) content keys (sample_keys) of the samples the rows encode; None: unknown
        self._last_keys = None  # (x, sample_keys(x)) of the last minibatch keyed (keys_of)

    # ---- training start and resume
    def restorable(self, state, n, m: int) -> bool:
        """Whether checkpoint ``state`` (from ``state_dict``) fits n training samples and a bank of m rows."""
        if state is None or state["latents"].shape[0] > m:
            return False
        idx = state["indices"]
        return idx is None or (n is not None and idx.numel() == m and int(idx.max()) < n)

    def setup(self, gen, m: int, source, state=None) -> None:
        """Training starts with a bank of m rows: from ``state`` (a restorable checkpoint state) if given,
        else m samples are drawn (``draw_samples``) and encoded (``gen.refresh_bank()``)."""
        self.source = source
        n = source[0]
        self.bank = LatentBank(m, self.bank.dim)
        if state is not None:  # resuming: the bank as it was saved
            self.bank.fill(state["latents"].to(gen.device))
            idx = state["indices"]
            if n is None or idx is None:
                self.indices, self.samples = idx, None
            else:
                self.use_samples(gen, idx)
            return
        self.bank.to(gen.device)
        if n is not None:
            self.draw_samples(gen)
            gen.refresh_bank()

    def state_dict(self) -> dict:
        """What a checkpoint keeps (``GENModule`` adds the batch counter): tensors, ints, None only."""
        return {"latents": self.bank.latents().detach().cpu(), "indices": self.indices}

    # ---- per epoch and per step
    def on_epoch_start(self, gen) -> None:
        """Before each training epoch."""

    def on_batch_start(self, gen) -> None:
        """Before each training batch (``gen._batches`` counts the batches before this one)."""

    def on_latents(self, gen, z: torch.Tensor, x: torch.Tensor) -> None:
        """After a training minibatch's loss: its detached latents z: (n, l) and samples x: (n, *data_shape)."""

    def hidden_rows(self, gen, x: torch.Tensor) -> torch.Tensor | None:
        """(k,) bool over the bank's rows: those minibatch x may not see (GEN ``leave_one_out``): the rows whose
        content key (``keys``) is one of x's samples; None (all visible) while the rows' keys are unknown."""
        if self.keys is None or len(self.keys) != len(self.bank):
            return None
        return torch.isin(self.keys, self.keys_of(x).to(self.keys.device))

    # ---- helpers
    def keys_of(self, x: torch.Tensor) -> torch.Tensor:
        """``sample_keys(x)``, computed once per minibatch: ``hidden_rows`` and a queue's ``push`` both need them
        for the same x in one step (the last x and its keys are kept; a new tensor is keyed afresh)."""
        last = self._last_keys
        if last is None or last[0] is not x:
            last = self._last_keys = (x, sample_keys(x))
        return last[1]

    def refresh(self, gen) -> torch.Tensor:
        """Re-encode the bank's samples with ``gen.encoder`` (no gradients; shared across DDP ranks)."""
        return self.bank.refresh(gen.encoder, self.samples)

    def reshuffle_due(self, gen) -> bool:
        """``bank_reshuffle`` asks for new samples at this epoch (not the first) and the data allow it."""
        return bool(gen.bank_reshuffle) and gen.current_epoch > 0 and self.source[0] is not None

    def draw_samples(self, gen) -> None:
        """Choose bank.size training samples at random (rank 0 draws, every rank uses the same indices)."""
        n, _ = self.source
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(int(torch.randint(2**62, ())))
                             )[: self.bank.size]
        _, size = world()
        if size > 1:
            import torch.distributed as dist

            idx = idx.to(gen.device)
            dist.broadcast(idx, src=0)
            idx = idx.cpu()
        self.use_samples(gen, idx)

    def use_samples(self, gen, idx: torch.Tensor) -> None:
        """Use the training samples at ``idx`` (m,) for the bank."""
        self.indices = idx
        self.samples = _near(self.source[1](idx), gen.device)


class RefreshBank(BankStrategy):
    """The paper's bank: m training samples re-encoded every ``refresh_every`` batches (new ones each epoch
    with ``bank_reshuffle``); a minibatch may not see the rows of its own samples (matched by content)."""

    needs_samples = True

    def on_epoch_start(self, gen) -> None:
        if self.reshuffle_due(gen):
            self.draw_samples(gen)
            gen.refresh_bank()

    def on_batch_start(self, gen) -> None:
        if gen._batches > 0 and gen._batches % gen.refresh_every == 0:
            gen.refresh_bank()

    def use_samples(self, gen, idx: torch.Tensor) -> None:
        super().use_samples(gen, idx)
        self.keys = sample_keys(self.samples).to(gen.device)

    def setup(self, gen, m: int, source, state=None) -> None:
        self.keys = None
        super().setup(gen, m, source, state)


class QueueBank(BankStrategy):
    """A FIFO of the latest minibatch latents, first filled by encoding m training samples (when the data
    allow random access; else it starts empty). Each row keeps its sample's content key, so with
    ``leave_one_out`` a minibatch does not see the rows of its own samples (they are in the queue when it
    holds more than an epoch of minibatches, i.e. on data sets with fewer than about m samples)."""

    def setup(self, gen, m: int, source, state=None) -> None:
        self.keys = None
        super().setup(gen, m, source, state)
        if state is not None:
            self.keys = state.get("keys")
            if self.keys is not None:
                self.keys = self.keys.to(gen.device)
        elif self.samples is not None:
            self.keys = sample_keys(self.samples).to(gen.device)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "keys": None if self.keys is None else self.keys.detach().cpu()}

    def on_epoch_start(self, gen) -> None:
        if self.reshuffle_due(gen):
            self.draw_samples(gen)  # new samples (read by e.g. gens.fidelity), the queue itself is untouched

    def on_latents(self, gen, z: torch.Tensor, x: torch.Tensor) -> None:
        self.push(gen, z, x)

    def push(self, gen, z: torch.Tensor, x: torch.Tensor) -> None:
        """Append the latents z: (n, l) of samples x to the queue, with their content keys."""
        self.bank.push(z)
        keys = all_gather_rows(self.keys_of(x).to(z.device))
        if self.keys is not None:
            keys = torch.cat([self.keys.to(z.device), keys])
        elif len(self.bank) > len(keys):  # older rows of unknown samples (restored without keys): keys stay unknown
            return
        self.keys = keys[-self.bank.size:]


class EMAQueueBank(QueueBank):
    """A queue filled by a slowly moving copy of the encoder (momentum contrast's key encoder, He et al. 2020).

    The copy's weights follow the encoder's as an exponential moving average, ``theta_ema <- momentum *
    theta_ema + (1 - momentum) * theta`` once per training minibatch; the minibatch is then encoded by the
    copy, without gradients, and its latents enter the queue (one extra no-grad encoder forward of n samples
    per step, against m / kb for ``refresh``). The queue starts as the copy's encodings of m training
    samples. Rows come from nearly the same encoder, so they are consistent with one another, unlike the
    plain queue's rows from an encoder that moved during the last m / n steps; they lag the encoder by about
    1 / (1 - momentum) + m / (2 n) steps. ``momentum``: a class attribute (subclass and ``register_bank`` to
    change it). Measured (BENCHMARKS "Bank strategies"): unstable on full MNIST at momentum 0.99 (latent
    outliers, gap 1.21 against refresh's 0.79), so it is not the default.
    """

    momentum = 0.99

    def __init__(self, size: int, dim: int):
        super().__init__(size, dim)
        self.ema = None  # the moving copy of gen.encoder

    def restorable(self, state, n, m: int) -> bool:
        return super().restorable(state, n, m) and state.get("ema") is not None

    def setup(self, gen, m: int, source, state=None) -> None:
        import copy

        self.ema = copy.deepcopy(gen.encoder).requires_grad_(False)
        if state is not None:
            self.ema.load_state_dict(state["ema"])
        super().setup(gen, m, source, state)

    def state_dict(self) -> dict:
        ema = None if self.ema is None else {k: v.detach().cpu() for k, v in self.ema.state_dict().items()}
        return {**super().state_dict(), "ema": ema}

    def refresh(self, gen) -> torch.Tensor:
        return self.bank.refresh(self.ema if self.ema is not None else gen.encoder, self.samples)

    @torch.no_grad()
    def on_latents(self, gen, z: torch.Tensor, x: torch.Tensor) -> None:
        if self.ema is None:  # not set up (a module used outside a Trainer): the plain queue
            return super().on_latents(gen, z, x)
        mu = float(self.momentum)
        for e, p in zip(self.ema.parameters(), gen.encoder.parameters()):
            e.mul_(mu).add_(p.detach(), alpha=1.0 - mu)
        for e, b in zip(self.ema.buffers(), gen.encoder.buffers()):
            e.copy_(b)
        self.ema.train(gen.encoder.training)
        self.push(gen, self.ema(x.to(gen.device)).detach(), x)


def register_bank(name: str, cls, *, replace: bool = False):
    """Make the ``BankStrategy`` subclass ``cls`` the bank strategy ``name`` (``bank_mode=name``). Returns cls."""
    if not (isinstance(cls, type) and issubclass(cls, BankStrategy)):
        raise TypeError(f"cls: must be a subclass of gens.bank.BankStrategy, got {cls!r}")
    return BANKS.register(name, cls, replace=replace)
