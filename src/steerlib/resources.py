"""Where the book's input files are: the repository's ``data/`` folder, shipped inside the wheel.

``pyproject.toml`` maps the top-level ``data/`` folder to the package ``steerlib.data``, so the same
files are found from an editable checkout, a plain ``pip install`` and Colab.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def data_path(*parts: str) -> Path:
    """Path of ``data/<parts...>``; a ``ValueError`` naming the file if it does not exist."""
    path = Path(str(resources.files("steerlib.data"))).joinpath(*parts)
    if not path.exists():
        raise ValueError(
            f"data file {'/'.join(parts)!r} not found (looked in {path.parent}): is steerlib installed "
            "from a complete checkout of the repository? `pip install -e .` from its root ships data/."
        )
    return path
