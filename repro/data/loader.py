"""A loader that keeps a whole split as uint8 on the device and augments in batch.

Random crop (zero padding) and horizontal flip are done with tensor indexing on the whole
batch at once, so on a GPU no worker processes are needed and on a CPU the cost is small
next to the model. Order and augmentation are a pure function of (seed, epoch), which is
what makes a resumed run see the same batches as an uninterrupted one.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .cifar import MEAN, STD


def to_uint8_tensor(images: np.ndarray | torch.Tensor, image_size: int | None = None) -> torch.Tensor:
    """HWC uint8 images [N, H, W, 3] → CHW uint8 tensor [N, 3, S, S] (area-resized if S given)."""
    x = torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2).contiguous()
    if image_size is not None and image_size != x.shape[-1]:
        x = F.interpolate(x.float(), size=(image_size, image_size), mode="area")
        x = x.round().clamp(0, 255).to(torch.uint8)
    return x


def random_crop_flip(x: torch.Tensor, pad: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Batched random crop after zero padding, and random horizontal flip.

    x: [B, C, H, W] (any dtype). Each image gets its own offsets in [0, 2·pad] and its own
    coin for the flip, drawn from ``gen``.
    """
    b, _, h, w = x.shape
    dev = x.device
    if pad > 0:
        xp = F.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device=gen.device).to(dev)
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device=gen.device).to(dev)
        rows = (dy[:, None] + torch.arange(h, device=dev)[None, :])  # [B, H]
        cols = (dx[:, None] + torch.arange(w, device=dev)[None, :])  # [B, W]
    else:
        xp = x
        rows = torch.arange(h, device=dev).expand(b, h)
        cols = torch.arange(w, device=dev).expand(b, w)
    if flip:
        coin = torch.rand(b, generator=gen, device=gen.device).to(dev) < 0.5
        cols = torch.where(coin[:, None], cols.flip(1), cols)
    bi = torch.arange(b, device=dev)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()


class TensorLoader:
    """Batches of one split kept whole on ``device``.

    images: uint8 [N, 3, S, S] (see ``to_uint8_tensor``); labels: int64 [N].
    Yields (x: float32 [B, 3, S, S] normalised, y: int64 [B]).
    train=True shuffles and augments (crop with ``pad``, flip); train=False does neither.
    shuffle/augment can be set apart from ``train`` (e.g. a fixed partition without
    augmentation for the hard-batch chapter).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        device: str | torch.device = "cpu",
        train: bool = True,
        seed: int = 0,
        pad: int = 4,
        flip: bool = True,
        shuffle: bool | None = None,
        augment: bool | None = None,
        drop_last: bool | None = None,
        mean: Sequence[float] = MEAN,
        std: Sequence[float] = STD,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = torch.as_tensor(labels, dtype=torch.int64).to(self.device)
        if len(self.images) != len(self.labels):
            raise ValueError("images and labels differ in length")
        self.batch_size = batch_size
        self.seed = seed
        self.pad, self.flip = pad, flip
        self.shuffle = train if shuffle is None else shuffle
        self.augment = train if augment is None else augment
        self.drop_last = train if drop_last is None else drop_last
        self.drop_last = self.drop_last and len(self.labels) >= batch_size
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1) * 255
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next iteration yields."""
        self.epoch = epoch

    def _generator(self, salt: int) -> torch.Generator:
        # CPU generator: identical streams on every device, so a run is reproducible
        # whether it is resumed on a CPU or a GPU.
        g = torch.Generator()
        g.manual_seed((self.seed * 1_000_003 + self.epoch * 7919 + salt) % (2**63 - 1))
        return g

    def order(self) -> torch.Tensor:
        """Sample indices of this epoch in the order they are served."""
        n = len(self.labels)
        if self.shuffle:
            return torch.randperm(n, generator=self._generator(1)).to(self.device)
        return torch.arange(n, device=self.device)

    def batches(self) -> list[torch.Tensor]:
        """This epoch's partition into index batches (what ``__iter__`` serves)."""
        idx = self.order()
        stop = len(self) * self.batch_size if self.drop_last else len(idx)
        return list(idx[:stop].split(self.batch_size))

    def fetch(self, idx: torch.Tensor, gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised (and, if augmenting, augmented) batch for the given indices."""
        x = self.images[idx]
        if self.augment:
            x = random_crop_flip(x, self.pad, self.flip, gen if gen is not None else self._generator(2))
        x = (x.float() - self.mean) / self.std
        return x, self.labels[idx]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = self._generator(2)
        for idx in self.batches():
            yield self.fetch(idx, gen)
