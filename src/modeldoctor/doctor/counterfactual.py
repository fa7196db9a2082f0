"""Counterfactual backgrounds: the mask-guided form of "Mixed-Rand" training (Xiao et al. 2021).

Every annotated training object is pasted onto the background of *another class's* annotated image, whose own
object was erased and inpainted (:func:`modeldoctor.data.swap.erase_object`), and trained with cross-entropy on
the object's class:

``L_cf = CE(f(M_i ⊙ x_i + (1 − M_i) ⊙ erase(x_d)), y_i)``,  d drawn with ``y_d ≠ y_i``.

Unlike a gradient penalty it cannot be lowered by shrinking the logits or by rewriting early features: the only
way to fit a composite is to read the object, because its background votes for another class.  Only the
training pool's masks are used (the held-out annotated images stay out, as objects and as backgrounds).
"""

from __future__ import annotations

import zlib

import torch

from modeldoctor.core.errors import UserError
from modeldoctor.data.bundle import ImageSplit
from modeldoctor.data.masks import expand_mask
from modeldoctor.data.swap import PLACES, donor_shift, erase_object, object_boxes, shifted
from modeldoctor.doctor.annotation import MaskBank


class Composer:
    """Composites of ``bank``'s annotated images of ``split`` (their backgrounds erased once, kept in memory)."""

    def __init__(self, split: ImageSplit, bank: MaskBank, grow: int = 0, place: str = "own") -> None:
        if place not in PLACES:
            raise UserError(f"unknown paste place {place!r}; choose {' or '.join(PLACES)}")
        self.split, self.bank, self.place = split, bank, place
        self.pool = list(bank.pool)
        self.labels = split.labels[self.pool]
        if len(set(self.labels.tolist())) < 2:
            raise UserError("counterfactual backgrounds need annotated images of at least two classes; annotate more")
        masks = bank.by_index()
        # Everything a composite needs, once: every training step composes a batch from these (no per-image decode).
        self.images = torch.stack([split.raw(i) for i in self.pool])
        self.backgrounds = torch.stack([erase_object(self.images[r], masks[i]) for r, i in enumerate(self.pool)])
        self.keep = expand_mask(torch.stack([masks[i] for i in self.pool]), grow).unsqueeze(1)  # (P, 1, H, W)
        self.boxes = object_boxes(self.keep[:, 0])
        self.spots = object_boxes(torch.stack([masks[i] for i in self.pool]).bool())  # where each donor's object was

    def compose(self, objects: torch.Tensor, donors: torch.Tensor) -> torch.Tensor:
        """Normalised composites (N, C, H, W): pool row ``objects[n]``'s object on pool row ``donors[n]``'s background
        (:func:`modeldoctor.data.swap.paste_object`, batched; with ``place="donor"`` at the donor object's place)."""
        keep, images = self.keep[objects], self.images[objects]
        if self.place == "donor":
            shifts = donor_shift(self.boxes[objects], self.spots[donors], *keep.shape[-2:])
            keep, images = shifted(keep, shifts), shifted(images, shifts)
        composites = torch.where(keep, images, self.backgrounds[donors])
        return (composites - self.split.mean) / self.split.std

    def draw(self, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``count`` (object, donor) pool rows, each donor of a different class than its object."""
        objects = torch.randint(len(self.pool), (count,), generator=generator)
        return objects, self._donors(objects, generator)

    def _donors(self, objects: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        donors = torch.randint(len(self.pool), (len(objects),), generator=generator)
        same = self.labels[objects] == self.labels[donors]
        while bool(same.any()):
            donors[same] = torch.randint(len(self.pool), (int(same.sum()),), generator=generator)
            same = self.labels[objects] == self.labels[donors]
        return donors

    def batch(self, count: int, key: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``count`` composites and their labels; the draw depends only on (seed, ``key``), e.g. the batch's indices,
        so a resumed run sees the same composites."""
        generator = torch.Generator().manual_seed(zlib.crc32(key.cpu().numpy().tobytes()) ^ (seed + 7919))
        objects, donors = self.draw(count, generator)
        return self.compose(objects, donors), self.labels[objects]

    def dataset(self, per_object: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Every pool object on ``per_object`` random other-class backgrounds (the last-layer refit's data)."""
        generator = torch.Generator().manual_seed(seed)
        objects = torch.arange(len(self.pool)).repeat_interleave(per_object)
        return self.compose(objects, self._donors(objects, generator)), self.labels[objects]


__all__ = ["Composer"]
