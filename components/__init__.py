"""kfp v2 lightweight components: each maps typed artifacts and parameters onto one function in
:mod:`anet.steps` and nothing else (no ML logic here).

Every component runs on the project image (``docker/Dockerfile``: torch, this package and kfp baked
in), so ``install_kfp_package=False`` and no pip bootstrap runs at container start.

Pitfall: ``base_image`` is evaluated when the ``@dsl.component`` decorator runs, i.e. when a
component module is first imported. ``ANET_IMAGE`` therefore has to be set *before* anything
imports ``components`` or ``pipelines`` (``ANET_IMAGE=reg/anet:1.2 make pipeline-compile``);
changing it afterwards has no effect on an already-imported component.
"""

from __future__ import annotations

import os

from anet.contract import IMAGE_ENV

DEFAULT_IMAGE = "ghcr.io/anet-pipeline/anet:0.1.0"
IMAGE = os.environ.get(IMAGE_ENV, DEFAULT_IMAGE)
