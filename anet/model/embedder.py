"""What the registry serves: a trained ANet reduced to ``images -> L2-normalised retrieval features``.

A plain module-level class, so a pickled model finds it by its import path
(``anet.model.embedder.ReidEmbedder``) without any name rewriting.

Example:
    >>> embedder = ReidEmbedder(load_model_from_checkpoint("runs/x/stage_two/final.pt"), feature="j")
    >>> embedder(images).shape          # images: normalised B x 3 x H x W
    torch.Size([B, 512])
"""

from __future__ import annotations

import torch
from torch import nn


class ReidEmbedder(nn.Module):
    """Normalised images B x 3 x H x W -> L2-normalised features B x D (``feature`` = f | fa | j)."""

    def __init__(self, model: nn.Module, feature: str):
        super().__init__()
        self.model, self.feature = model, feature

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.embed(images, feature=self.feature)  # B x D
