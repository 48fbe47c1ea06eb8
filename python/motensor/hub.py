"""Hugging Face Hub ids wherever motensor takes a checkpoint path.

``resolve("nvidia/Llama-3.1-8B-Instruct-FP8")`` returns the local snapshot directory of the repo,
downloading (``huggingface_hub.snapshot_download``) only what motensor reads: safetensors shards,
JSON files (config, quantization config, index, tokenizer) and tokenizer files. The Hub's own
conventions hold: ``revision``, ``cache_dir``, ``token``, ``local_files_only`` and
``HF_HUB_OFFLINE=1`` (cache only, no network), with its progress bars on downloads.

An existing local path is always taken as a path, so nothing changes for directories.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path
from typing import Optional, Union

from motensor.errors import ArgumentError, ShardError

log = logging.getLogger("motensor.hub")

#: The files a ModelOpt checkpoint needs: weights, every JSON (config.json, hf_quant_config.json,
#: generation_config.json, the shard index, tokenizer configs) and the tokenizer model files.
ALLOW_PATTERNS = (
    "*.safetensors",
    "*.json",
    "tokenizer.model",
    "*.tiktoken",
    "*.txt",  # merges.txt, vocab.txt
    "*.jinja",  # chat templates
)

# "org/name" or "name" (the Hub's repo id grammar); anything else is treated as a path.
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*$")


def looks_like_repo_id(value: str) -> bool:
    """Whether ``value`` has the shape of a Hub repo id (``org/name``) rather than a path."""
    return bool(_REPO_ID.match(value)) and ".." not in value and not value.endswith((".safetensors", ".json"))


def resolve(
    path_or_repo_id: Union[str, "os.PathLike[str]"],
    *,
    revision: Optional[str] = None,
    cache_dir: Union[str, "os.PathLike[str]", None] = None,
    token: Union[str, bool, None] = None,
    local_files_only: bool = False,
    progress: bool = True,
) -> Path:
    """A local checkpoint directory (or file) for a path or a Hub repo id.

    A path that exists is returned as is. Otherwise ``path_or_repo_id`` must look like a repo id
    (``"org/name"``); its snapshot at ``revision`` is fetched into the Hugging Face cache
    (``cache_dir``, default ``HF_HUB_CACHE``) with only the files motensor reads, or found there
    when ``local_files_only=True`` or ``HF_HUB_OFFLINE=1``.

    Raises:
        motensor.errors.ShardError: neither a local path nor a repo id found on the Hub / in the cache.
        motensor.errors.ArgumentError: ``huggingface_hub`` is not installed (the ``models`` extra).
    """
    local = Path(os.fspath(path_or_repo_id)).expanduser()
    if local.exists():
        return local
    text = os.fspath(path_or_repo_id)
    if not looks_like_repo_id(text):
        raise ShardError(f"{text}: no such file or directory (and not a Hugging Face Hub repo id like 'org/name')",
                         file=text)
    try:
        import huggingface_hub
    except ImportError:
        raise ArgumentError(
            f"{text!r} is not a local path; loading Hub repo ids needs huggingface_hub: pip install 'motensor[models]'"
        ) from None

    offline = local_files_only or huggingface_hub.constants.HF_HUB_OFFLINE
    try:
        with _bars(progress):
            snapshot = huggingface_hub.snapshot_download(
                repo_id=text,
                revision=revision,
                cache_dir=os.fspath(cache_dir) if cache_dir is not None else None,
                token=token,
                local_files_only=offline,
                allow_patterns=list(ALLOW_PATTERNS),
            )
    except Exception as e:  # HTTP, connection (httpx), cache and validation errors alike: say which repo
        where = "in the Hugging Face cache (offline)" if offline else "on the Hugging Face Hub"
        rev = f" at revision {revision!r}" if revision else ""
        raise ShardError(f"{text}: not a local path, and no snapshot{rev} {where}: {type(e).__name__}: {e}",
                         file=text) from e
    log.info("%s -> %s", text, snapshot)
    return Path(snapshot)


@contextlib.contextmanager
def _bars(progress: bool):
    """huggingface_hub's download bars on or off for one call (their switch is global)."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    if not progress and not was_disabled:
        disable_progress_bars()
    try:
        yield
    finally:
        if not progress and not was_disabled:
            enable_progress_bars()


def fetch_companion(root: Union[str, "os.PathLike[str]"], filename: str) -> Optional[Path]:
    """``root/filename``, fetched into the same Hub cache snapshot if ``root`` is one and lacks it.

    transformers downloads only the weights and ``config.json``; a checkpoint whose quantization is
    described only in ``hf_quant_config.json`` (ModelOpt < 0.31) needs that file too. Returns the
    local path, or None when it is not there and cannot be fetched (offline, no such file, not a
    cache snapshot)."""
    root = Path(root)
    local = root / filename
    if local.is_file():
        return local
    parts = root.resolve().parts
    if len(parts) < 3 or parts[-2] != "snapshots" or not parts[-3].startswith("models--"):
        return None
    repo_id = parts[-3].removeprefix("models--").replace("--", "/")
    try:
        import huggingface_hub

        got = huggingface_hub.hf_hub_download(repo_id, filename, revision=parts[-1],
                                              cache_dir=str(Path(*parts[:-3])))
    except Exception as e:  # offline, missing file, no huggingface_hub: the caller reports what it lacks
        log.info("%s: could not fetch %s from %s (%s)", root, filename, repo_id, e)
        return None
    return Path(got)
