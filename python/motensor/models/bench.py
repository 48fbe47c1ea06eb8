"""End-to-end timing of a causal LM: prefill and decode throughput, time to first token.

Shared by ``motensor bench`` and ``benches/e2e.py``; works on any transformers model (motensor's
or a plain bf16 one), on CUDA (synchronised, CUDA events not needed at these durations) or CPU.
Every figure is the best of ``repeat`` runs after a warm-up run.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from motensor.nn.replace import model_device  # one definition; the benches import it from here


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)




def random_ids(model, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """Token ids avoiding the first few ids (often special tokens)."""
    vocab = model.config.get_text_config().vocab_size if hasattr(model.config, "get_text_config") else model.config.vocab_size
    g = torch.Generator().manual_seed(seed)
    lo = min(16, vocab // 2)
    return torch.randint(lo, vocab, (batch, length), generator=g).to(model_device(model))


def best_of(fn: Callable[[], Any], device: torch.device, repeat: int, warmup: int = 1) -> float:
    """Minimum wall seconds of ``fn()`` over ``repeat`` runs, after ``warmup`` untimed runs."""
    for _ in range(warmup):
        fn()
        sync(device)
    best = float("inf")
    for _ in range(max(1, repeat)):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def _generate(model, ids: torch.Tensor, new_tokens: int, **kwargs):
    mask = torch.ones_like(ids)
    return model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                          do_sample=False, pad_token_id=0, eos_token_id=None, **kwargs)


@dataclass
class DecodeResult:
    tokens_per_s: float  # batch * (new_tokens - 1) / (t(new_tokens) - t(1))
    seconds_per_token: float
    first_token_s: float  # prefill of the prompt + one token


@torch.no_grad()
def decode(model, batch: int, prompt_len: int, new_tokens: int, *, repeat: int = 3,
           generate_kwargs: Optional[dict] = None) -> DecodeResult:
    """Decode throughput through ``model.generate`` (greedy): the time of ``new_tokens`` minus the
    time of one token, so prefill and set-up cancel out."""
    device = model_device(model)
    ids = random_ids(model, batch, prompt_len)
    kw = generate_kwargs or {}
    t_one = best_of(lambda: _generate(model, ids, 1, **kw), device, repeat)
    t_all = best_of(lambda: _generate(model, ids, new_tokens, **kw), device, repeat)
    steps = max(1, new_tokens - 1)
    per_token = max(t_all - t_one, 1e-9) / steps
    return DecodeResult(tokens_per_s=batch / per_token, seconds_per_token=per_token, first_token_s=t_one)


@torch.no_grad()
def prefill(model, batch: int, seq_len: int, *, repeat: int = 3) -> float:
    """Prompt tokens per second of one forward over ``[batch, seq_len]`` (no cache kept)."""
    device = model_device(model)
    ids = random_ids(model, batch, seq_len, seed=1)
    t = best_of(lambda: model(ids, use_cache=False, logits_to_keep=1), device, repeat)
    return batch * seq_len / t


@torch.no_grad()
def first_token(model, prompt_len: int = 128) -> float:
    """Seconds to the first generated token of a ``prompt_len`` prompt, timed once with no warm-up
    (call it right after loading for the cold figure that load-to-first-token adds to the load)."""
    device = model_device(model)
    ids = random_ids(model, 1, prompt_len, seed=2)
    sync(device)
    t0 = time.perf_counter()
    _generate(model, ids, 1)
    sync(device)
    return time.perf_counter() - t0
