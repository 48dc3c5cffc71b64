"""What the registry serves: a trained ANet reduced to ``images -> embedding + attribute probabilities``.

:class:`ReidEmbedder` wraps an eval-mode ANet: normalised images in, the L2-normalised retrieval
feature (``feature`` = f | fa | j, the one evaluation scores) and a softmax over each attribute
classifier out, keyed by attribute name. One forward pass gives both; with ``flip`` the feature of
the image and its mirror are summed and re-normalised exactly as the evaluator's flip test does.
Decoding and resizing happen a room above (:mod:`anet.search.predictor`).

Example:
    >>> embedder = ReidEmbedder(load_model_from_checkpoint("runs/x/stage_two/final.pt"), feature="j")
    >>> out = embedder(images)          # images: normalised B x 3 x H x W
    >>> out.embedding.shape, out.attr_probs["color"].shape
    (torch.Size([B, 512]), torch.Size([B, 10]))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ReidOutput:
    """One batch through the served model."""

    embedding: torch.Tensor  # B x D, L2-normalised (the retrieval feature)
    attr_probs: dict[str, torch.Tensor]  # name -> B x m_i, softmax of the attribute classifier


class ReidEmbedder(nn.Module):
    """Normalised images B x 3 x H x W -> :class:`ReidOutput` (``feature`` = f | fa | j).

    ``flip``: add the feature of the horizontally mirrored image before normalising (the
    evaluator's ``eval.flip``); attribute probabilities always come from the unflipped image.
    """

    def __init__(self, model: nn.Module, feature: str, flip: bool = False):
        super().__init__()
        self.model, self.feature, self.flip = model, feature, flip

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> ReidOutput:
        logits: dict[str, torch.Tensor] = {}
        # the attribute logits come from the same pass as the feature: a second pass would double the cost
        hooks = [self.model.attr_branches[f"a_{name}"].register_forward_hook(_keep_logits(logits, name))
                 for name in self.model.attr_names]
        try:
            vec = self.model.embed(images, feature=self.feature)  # B x D, L2-normalised
        finally:
            for hook in hooks:
                hook.remove()
        if self.flip:
            vec = vec + self.model.embed(images.flip(3), feature=self.feature)
        probs = {name: logits[name].float().softmax(dim=1) for name in self.model.attr_names}  # B x m_i
        # normalised once more, as the evaluator does (extract_features), so both give the same floats
        return ReidOutput(nn.functional.normalize(vec.float(), dim=1), probs)


def _keep_logits(store: dict[str, torch.Tensor], name: str) -> Callable[..., None]:
    """A forward hook on an attribute branch that keeps its logits (the branch's 4th output)."""

    def hook(module: nn.Module, inputs: object, output: tuple[torch.Tensor, ...]) -> None:
        store[name] = output[3]  # B x m_i

    return hook
