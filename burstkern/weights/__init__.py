"""Shipped trained checkpoints of burstkern's models (package data) and their model card (README.md).

``EBSRD.from_pretrained("tiny")`` loads ``tiny.pt`` from here with ``torch.load(weights_only=True)``.
"""

import os

WEIGHTS_DIR = os.path.dirname(os.path.abspath(__file__))


def path(name: str) -> str:
    """The file of the shipped checkpoint ``name`` (e.g. ``"tiny"`` -> ``.../burstkern/weights/tiny.pt``)."""
    return os.path.join(WEIGHTS_DIR, f"{name}.pt")
