#!/usr/bin/env python
"""End-to-end benchmark: a Llama-3.1-8B-shaped model, motensor (NVFP4, W4A16_AWQ) vs bf16 transformers.

One command on a GPU machine (from the repository root, after ``./scripts/setup.sh``)::

    .venv/bin/python benches/e2e.py

writes ``benches/results/e2e-<gpu>-<YYYYMMDD>.json`` (shared/BENCHMARKS.md) and a PNG beside it
(``benches/common.py``; the PNG needs matplotlib).

Cases (``<shape>`` = ``8b``): ``8b-decode-b1`` and ``8b-decode-b16`` (greedy ``generate``, prompt
128, 256 new tokens; tok/s = batch * 255 / (t(256 tokens) - t(1 token)), so prefill and set-up
cancel), ``8b-prefill-2048`` (one forward over 2048 tokens, tok/s), ``8b-load-to-first-token``
(seconds from nothing in memory to the first generated token of a 128-token prompt: load + build
+ prefill + one step, page cache warm). Impls: ``motensor_<quant_algo>`` (eager
``from_pretrained`` model), ``motensor_<quant_algo>_compiled`` (static KV cache + ``torch.compile``
through transformers' ``CompileConfig``), ``hf_bf16_eager``, ``hf_bf16_compiled`` (the same model
in bf16 with random weights, transformers only). Every figure is the best of ``--repeat`` runs
after a warm-up; a case that fails is recorded in ``"failures"`` and the run goes on.

Checkpoints are random weights in exact ModelOpt layout (``benches/synthetic.py``), written once
under ``benches/.cache`` (about 6 GB each; the bf16 one for the transformers load figure, 16 GB).

``--smoke`` runs the whole harness on a tiny model on the CPU in a minute or two (compiled impls
with the ``aot_eager`` backend), writing into a temporary directory unless ``--out`` is given.

Not yet run on a GPU (written on a CPU-only machine): expect a full run to take tens of minutes
(eager decode of 4 x 257 tokens per batch size and impl, plus compilation); ``--formats nvfp4
--repeat 1`` or ``--no-compiled`` give a quicker first look.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benches"))

import torch  # noqa: E402

import synthetic  # noqa: E402  (benches/synthetic.py)
from common import RESULTS_DIR, write_results  # noqa: E402  (benches/common.py: JSON + PNG)

FULL = dict(shape="8b", device="cuda", prompt=128, new_tokens=256, batches=(1, 16), prefill=2048, repeat=3,
            compile_backend="inductor", compile_mode="reduce-overhead")
SMOKE = dict(shape="tiny", device="cpu", prompt=16, new_tokens=6, batches=(1, 2), prefill=64, repeat=1,
             compile_backend="aot_eager", compile_mode=None)
# --quick (make gpu-check): batch-1 decode only, a manual greedy loop on a static cache, eager and
# replayed as one CUDA graph per token; 64 timed tokens, best of 3.
QUICK = dict(shape="8b", device="cuda", prompt=16, new_tokens=64, repeat=3, compile_backend="inductor")
QUICK_SMOKE = dict(shape="tiny", device="cpu", prompt=8, new_tokens=4, repeat=1, compile_backend="aot_eager")


def log(*a) -> None:
    print(f"[e2e {time.strftime('%H:%M:%S')}]", *a, flush=True)


# -- helpers -------------------------------------------------------------------------------------
def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def compile_kwargs(cfg: dict, mode: Optional[str] = "config") -> dict:
    from transformers import CompileConfig

    cc = CompileConfig(fullgraph=True, backend=cfg["compile_backend"], mode=cfg["compile_mode"] if mode == "config" else mode)
    if cfg["device"] == "cpu":
        cc._compile_all_devices = True  # transformers only auto-compiles on accelerators otherwise
    return {"cache_implementation": "static", "compile_config": cc}


def hf_model(config_dir: Path, device: torch.device):
    """The synthetic checkpoint's architecture in bf16 with random weights, transformers only."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(config_dir)
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.02)
    return model.eval().requires_grad_(False)


def hf_bf16_checkpoint(quant_dir: Path, cache: Path, device: torch.device) -> Path:
    """A bf16 checkpoint of the same architecture (for transformers' load-to-first-token)."""
    out = cache / f"{quant_dir.name.split('-')[0]}-bf16"
    if (out / "config.json").is_file():
        return out
    model = hf_model(quant_dir, device)
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    model.save_pretrained(tmp)
    os.replace(tmp, out)
    del model
    free(device)
    return out


class Results:
    def __init__(self, shape: str, partial: Optional[Callable[["Results"], None]] = None):
        self.shape = shape
        self.rows: list[dict] = []
        self.failures: list[dict] = []
        self.skipped: dict[str, str] = {}
        self._partial = partial

    def checkpoint(self) -> None:
        """Rows so far to ``e2e-partial.json`` (what a run stopped at its cap leaves behind)."""
        if self._partial is not None:
            self._partial(self)

    def add(self, case: str, impl: str, metric: str, value: float, note: Optional[str] = None) -> None:
        row = {"case": f"{self.shape}-{case}", "impl": impl, "metric": metric, "value": round(float(value), 4)}
        if note:
            row["note"] = note
        self.rows.append(row)
        log(f"{row['case']:<24} {impl:<28} {value:10.2f} {metric}")

    def attempt(self, what: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as e:  # one broken case must not lose the others
            log(f"FAILED {what}: {type(e).__name__}: {e}")
            self.failures.append({"what": what, "error": f"{type(e).__name__}: {e}",
                                  "traceback": traceback.format_exc(limit=6)})


def run_throughput(res: Results, impl: str, model, cfg: dict, compiled: bool = False) -> None:
    """Decode at each batch size and prefill. ``compiled``: decode with a static cache and
    transformers' automatic ``torch.compile`` (``cfg["compile_mode"]``; if that fails, once more
    with the default mode, noted in the row), prefill through ``torch.compile(model)``."""
    from motensor.models import bench

    prefill_model = None
    if compiled:
        prefill_model = torch.compile(model, backend=cfg["compile_backend"])
    for b in cfg["batches"]:
        def one(b=b):
            kwargs = compile_kwargs(cfg) if compiled else None
            note = None
            try:
                d = bench.decode(model, b, cfg["prompt"], cfg["new_tokens"], repeat=cfg["repeat"],
                                 generate_kwargs=kwargs)
            except Exception as e:
                if not compiled or cfg["compile_mode"] is None:
                    raise
                log(f"{impl} decode b{b}: compile mode {cfg['compile_mode']} failed ({type(e).__name__}: {e}); "
                    "retrying with the default mode")
                torch._dynamo.reset()
                note = f"compile mode {cfg['compile_mode']} failed ({type(e).__name__}); default mode"
                d = bench.decode(model, b, cfg["prompt"], cfg["new_tokens"], repeat=cfg["repeat"],
                                 generate_kwargs=compile_kwargs(cfg, mode=None))
            res.add(f"decode-b{b}", impl, "tok/s", d.tokens_per_s, note=note)

        res.attempt(f"{impl} decode b{b}", one)
    res.attempt(f"{impl} prefill", lambda: res.add(
        f"prefill-{cfg['prefill']}", impl, "tok/s",
        bench.prefill(model if prefill_model is None else prefill_model, 1, cfg["prefill"], repeat=cfg["repeat"])))


def load_to_first_token(build: Callable[[], torch.nn.Module], cfg: dict, device: torch.device, runs: int = 2) -> float:
    from motensor.models import bench

    best = float("inf")
    for _ in range(runs):
        free(device)
        bench.sync(device)
        t0 = time.perf_counter()
        model = build()
        bench.first_token(model, cfg["prompt"])
        best = min(best, time.perf_counter() - t0)
        del model
    free(device)
    return best


# -- --quick: batch-1 decode with CUDA graphs ---------------------------------------------------------
class StepDecoder:
    """Batch-1 greedy decode one token per call on a transformers ``StaticCache``, every tensor at a
    fixed address (the token and its position live in device buffers updated in place), so one
    step can be captured as a CUDA graph and replayed: no Python, no launch gaps, as
    ``torch.compile(mode="reduce-overhead")`` would do, but without compiling."""

    def __init__(self, model, prompt: int, new_tokens: int, forward: Optional[Callable] = None):
        from transformers import StaticCache

        from motensor.models import bench

        self.model, self.forward = model, forward or model
        dev = bench.model_device(model)
        self.cache = StaticCache(config=model.config, max_cache_len=prompt + new_tokens + 8)
        self.tok = torch.zeros((1, 1), dtype=torch.long, device=dev)
        self.pos = torch.zeros((1,), dtype=torch.long, device=dev)
        self.start = prompt
        with torch.no_grad():
            out = model(input_ids=bench.random_ids(model, 1, prompt), past_key_values=self.cache,
                        cache_position=torch.arange(prompt, device=dev), use_cache=True, logits_to_keep=1)
        self.tok.copy_(out.logits[:, -1:].argmax(-1))
        self.pos.fill_(prompt)

    @torch.no_grad()
    def step(self) -> None:
        out = self.forward(input_ids=self.tok, position_ids=self.pos.view(1, 1), cache_position=self.pos,
                           past_key_values=self.cache, use_cache=True)
        self.tok.copy_(out.logits[:, -1:].argmax(-1))
        self.pos.add_(1)

    def rewind(self) -> None:
        self.pos.fill_(self.start)

    def graph(self):
        """Warm-up on a side stream (autotuning, lazy allocations), then capture one step."""
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                self.step()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            self.step()
        self.rewind()
        return g


def time_tokens(run_one: Callable[[], None], dec: StepDecoder, tokens: int, repeat: int) -> tuple[float, list]:
    """Best tokens/s over ``repeat`` runs of ``tokens`` steps (after one untimed step)."""
    from motensor.models import bench

    device = dec.pos.device
    run_one()
    rates = []
    for _ in range(max(1, repeat)):
        dec.rewind()
        bench.sync(device)
        t0 = time.perf_counter()
        for _ in range(tokens):
            run_one()
        bench.sync(device)
        rates.append(tokens / (time.perf_counter() - t0))
    return max(rates), rates


def quick_decode(res: "Results", impl: str, model, cfg: dict, graphs: bool, note: str) -> None:
    """Rows ``<impl>`` (eager manual loop) and ``<impl>_cudagraph`` for batch-1 decode."""
    dec = StepDecoder(model, cfg["prompt"], cfg["new_tokens"])
    best, rates = time_tokens(dec.step, dec, cfg["new_tokens"], cfg["repeat"])
    res.add("decode-b1", impl, "tok/s", best, note=f"eager greedy loop, static cache; {note}; runs "
            + "/".join(f"{r:.1f}" for r in rates))
    if not graphs:
        res.skipped[f"{impl}_cudagraph"] = "needs CUDA"
        return
    g = dec.graph()
    best, rates = time_tokens(g.replay, dec, cfg["new_tokens"], cfg["repeat"])
    res.add("decode-b1", f"{impl}_cudagraph", "tok/s", best, note=f"one CUDA graph per token, static cache; {note}; "
            "runs " + "/".join(f"{r:.1f}" for r in rates))


def quick_compiled(res: "Results", model, cfg: dict, graphs: bool) -> None:
    """bf16 transformers through ``torch.compile`` (static shapes), the step captured as a CUDA graph."""
    forward = torch.compile(model.forward, backend=cfg["compile_backend"], dynamic=False)
    dec = StepDecoder(model, cfg["prompt"], cfg["new_tokens"], forward=forward)
    t0 = time.perf_counter()
    run = dec.graph().replay if graphs else dec.step
    if not graphs:
        dec.step()
    took = time.perf_counter() - t0
    best, rates = time_tokens(run, dec, cfg["new_tokens"], cfg["repeat"])
    res.add("decode-b1", "hf_bf16_compiled", "tok/s", best,
            note=f"torch.compile({cfg['compile_backend']}, dynamic=False) of the forward, static cache"
                 f"{', CUDA graph per token' if graphs else ''}; compile + warm-up {took:.0f} s; runs "
                 + "/".join(f"{r:.1f}" for r in rates))


def run_quick(res: "Results", cfg: dict, formats: list, cache: Path, device: torch.device, deadline: float,
              compiled: bool) -> None:
    """motensor (each format) and bf16 transformers, batch-1 decode; stops starting work at the deadline."""
    import motensor

    graphs = device.type == "cuda"

    def time_left(what: str, need: float) -> bool:
        left = deadline - time.monotonic()
        if left < need:
            res.skipped[what] = f"not started: {left:.0f} s left of --max-seconds, about {need:.0f} s needed"
            log(f"skip {what}: {res.skipped[what]}")
            return False
        return True

    for i, fmt in enumerate(formats):
        algo = synthetic.FORMATS[fmt]
        impl = f"motensor_{algo}"
        if not time_left(impl, 20 if i == 0 else 30):
            continue

        def one(fmt=fmt, impl=impl):
            path = synthetic.ensure_checkpoint(cfg["shape"], fmt, cache)
            t0 = time.perf_counter()
            model = motensor.from_pretrained(path, device=device)
            load_s = time.perf_counter() - t0
            try:
                quick_decode(res, impl, model, cfg, graphs, f"from_pretrained {load_s:.1f} s")
            finally:
                del model
                free(device)

        res.attempt(f"{impl} decode", one)
        res.checkpoint()
    if time_left("hf_bf16", 30):
        config_dir = synthetic.ensure_checkpoint(cfg["shape"], formats[0], cache)  # for its config.json
        model = hf_model(config_dir, device)
        try:
            res.attempt("hf_bf16 decode", lambda: quick_decode(res, "hf_bf16_eager", model, cfg, graphs,
                                                               "transformers bf16, random weights"))
            res.checkpoint()
            if compiled and time_left("hf_bf16_compiled", 90):
                res.attempt("hf_bf16_compiled decode", lambda: quick_compiled(res, model, cfg, graphs))
                torch._dynamo.reset()
            elif not compiled:
                res.skipped["hf_bf16_compiled"] = "--no-compiled"
        finally:
            del model
            free(device)
    # eager rows are named <impl> / hf_bf16_eager; the graph rows <impl>_cudagraph
    for r in list(res.rows):
        if r["impl"] == "hf_bf16_eager_cudagraph":
            r["impl"] = "hf_bf16_cudagraph"


def quick_headline(rows: list[dict]) -> list[str]:
    val = {r["impl"]: r["value"] for r in rows if r["case"].endswith("decode-b1")}
    out = []
    for impl, v in sorted(val.items()):
        if not impl.startswith("motensor_"):
            continue
        peers = [f"{v / val[p]:.2f}x {p}" for p in ("hf_bf16_cudagraph", "hf_bf16_compiled", "hf_bf16_eager")
                 if val.get(p)]
        out.append(f"decode-b1 {impl} {v:.1f} tok/s" + (": " + ", ".join(peers) if peers else ""))
    return out


# -- the run -------------------------------------------------------------------------------------
def bench_motensor(res: Results, fmt: str, cfg: dict, cache: Path, device: torch.device, compiled: bool) -> None:
    import motensor

    path = synthetic.ensure_checkpoint(cfg["shape"], fmt, cache)
    algo = synthetic.FORMATS[fmt]
    impl = f"motensor_{algo}"
    log(f"{impl}: {path}")
    res.attempt(f"{impl} load-to-first-token", lambda: res.add(
        "load-to-first-token", impl, "s",
        load_to_first_token(lambda: motensor.from_pretrained(path, device=device), cfg, device),
        note="best of 2 in one process; page cache warm; includes from_pretrained, prefill of 128 tokens and one "
             "decode step (the first run also pays CUDA context and Triton JIT)"))
    model = motensor.from_pretrained(path, device=device)
    log(f"{impl}: load {model.motensor_report.load_stats}")
    run_throughput(res, impl, model, cfg)
    if compiled:
        run_throughput(res, f"{impl}_compiled", model, cfg, compiled=True)
        torch._dynamo.reset()
    del model
    free(device)


def bench_hf(res: Results, cfg: dict, cache: Path, device: torch.device, compiled: bool, hf_load: bool,
             fmt: str) -> None:
    from transformers import AutoModelForCausalLM

    config_dir = synthetic.ensure_checkpoint(cfg["shape"], fmt, cache)  # for its config.json
    if hf_load:
        def ltft():
            bf16_dir = hf_bf16_checkpoint(config_dir, cache, device)
            try:
                import accelerate  # noqa: F401  (transformers needs it for device_map)

                how = "from_pretrained(dtype=bf16, device_map=device)"

                def build():
                    return AutoModelForCausalLM.from_pretrained(bf16_dir, dtype=torch.bfloat16,
                                                                device_map=str(device)).eval()
            except ImportError:
                how = "from_pretrained(dtype=bf16).to(device) (no accelerate: no device_map)"

                def build():
                    return AutoModelForCausalLM.from_pretrained(bf16_dir, dtype=torch.bfloat16).to(device).eval()

            s = load_to_first_token(build, cfg, device)
            res.add("load-to-first-token", "hf_bf16_eager", "s", s, note=f"AutoModelForCausalLM.{how} + first token; "
                    "best of 2; page cache warm")

        res.attempt("hf_bf16 load-to-first-token", ltft)
    model = hf_model(config_dir, device)
    run_throughput(res, "hf_bf16_eager", model, cfg)
    if compiled:
        run_throughput(res, "hf_bf16_compiled", model, cfg, compiled=True)
        torch._dynamo.reset()
    del model
    free(device)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny model on the CPU: checks the harness, not speed")
    p.add_argument("--formats", nargs="+", default=["nvfp4", "w4a16_awq"], choices=sorted(synthetic.FORMATS))
    p.add_argument("--out", type=Path, default=None,
                   help="results directory (default: benches/results; --smoke: a temporary directory)")
    p.add_argument("--cache-dir", type=Path, default=None, help="synthetic checkpoints (default: benches/.cache)")
    p.add_argument("--repeat", type=int, default=None, help="timed runs per figure, best kept (default: 3)")
    p.add_argument("--batches", type=int, nargs="+", default=None, help="decode batch sizes (default: 1 16)")
    p.add_argument("--no-compiled", action="store_true", help="skip the static-cache + torch.compile impls")
    p.add_argument("--no-hf", action="store_true", help="skip the bf16 transformers baselines")
    p.add_argument("--no-hf-load", action="store_true", help="skip transformers' load-to-first-token (16 GB bf16 write)")
    p.add_argument("--quick", action="store_true",
                   help="batch-1 decode only, NVFP4 and W4A16_AWQ with CUDA graphs vs bf16 transformers "
                        "(make gpu-check)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="--quick: start no new model after this long; write what was measured")
    args = p.parse_args(argv)

    if args.quick:
        return main_quick(args, argv)
    cfg = dict(SMOKE if args.smoke else FULL)
    if args.repeat:
        cfg["repeat"] = args.repeat
    if args.batches:
        cfg["batches"] = tuple(args.batches)
    device = torch.device(cfg["device"])
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA GPU: run with --smoke for the CPU harness check")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    out = args.out or (Path(tempfile.mkdtemp(prefix="motensor-e2e-")) if args.smoke else RESULTS_DIR)
    cache = args.cache_dir or (out / ".cache" if args.smoke else synthetic.CACHE_DIR)
    compiled = not args.no_compiled

    res = Results(cfg["shape"])
    for fmt in args.formats:
        res.attempt(f"motensor {fmt}", lambda fmt=fmt: bench_motensor(res, fmt, cfg, cache, device, compiled))
    if not args.no_hf:
        res.attempt("hf bf16", lambda: bench_hf(res, cfg, cache, device, compiled, not args.no_hf_load,
                                                args.formats[0]))

    import transformers

    extra = {
        "note": (f"{cfg['shape']} Llama-3.1 shape, random weights; decode: greedy generate, prompt {cfg['prompt']}, "
                 f"{cfg['new_tokens']} new tokens, tok/s = batch*(new-1)/(t(new)-t(1)); prefill: one forward of "
                 f"{cfg['prefill']} tokens; best of {cfg['repeat']} after a warm-up; compiled = static cache + "
                 f"torch.compile({cfg['compile_backend']}, {cfg['compile_mode']}) via transformers CompileConfig"),
        "transformers": transformers.__version__,
    }
    if res.failures:
        extra["failures"] = res.failures
    command = "python " + " ".join([os.path.relpath(__file__, ROOT), *(argv if argv is not None else sys.argv[1:])])
    path = write_results("e2e", res.rows, command, out, device=str(device), **extra)
    log(f"wrote {path}" + (f"; {len(res.failures)} failure(s)" if res.failures else ""))
    return 1 if res.failures and not res.rows else 0


def main_quick(args, argv) -> int:
    start = time.monotonic()
    cfg = dict(QUICK_SMOKE if args.smoke else QUICK)
    if args.repeat:
        cfg["repeat"] = args.repeat
    device = torch.device(cfg["device"])
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU: run with --smoke for the CPU harness check")
    from transformers.utils import logging as hf_logging

    import transformers

    hf_logging.set_verbosity_error()
    out = args.out or (Path(tempfile.mkdtemp(prefix="motensor-e2e-")) if args.smoke else RESULTS_DIR)
    cache = args.cache_dir or (out / ".cache" if args.smoke else synthetic.CACHE_DIR)
    command = "python " + " ".join([os.path.relpath(__file__, ROOT), *(argv if argv is not None else sys.argv[1:])])

    def extra(res: Results) -> dict:
        d = {"note": (f"--quick: {cfg['shape']} Llama-3.1 shape, random weights, batch 1, prompt {cfg['prompt']}, "
                      f"{cfg['new_tokens']} timed tokens per run, best of {cfg['repeat']}; a greedy loop over "
                      "model(...) on a transformers StaticCache, eager (<impl>) and one CUDA graph per token "
                      "(<impl>_cudagraph); hf_bf16_compiled = torch.compile of the bf16 forward + CUDA graph"),
             "transformers": transformers.__version__, "quick": True, "smoke": args.smoke,
             "skipped": res.skipped, "headline": quick_headline(res.rows)}
        if res.failures:
            d["failures"] = res.failures
        return d

    def partial(res: Results) -> None:
        if args.smoke:
            return
        import json

        from common import machine_info

        doc = {"bench": "e2e", "command": command, "machine": machine_info(str(device)), "rows": res.rows,
               **extra(res)}
        (Path(out) / "e2e-partial.json").write_text(json.dumps(doc, indent=1) + "\n")

    res = Results(cfg["shape"], partial)
    deadline = start + (args.max_seconds if args.max_seconds else 1e9)
    formats = args.formats
    run_quick(res, cfg, formats, cache, device, deadline, compiled=not args.no_compiled and not args.no_hf)
    doc_extra = extra(res)
    doc_extra["wall_s"] = round(time.monotonic() - start, 1)
    path = write_results("e2e", res.rows, command, out, device=str(device), **doc_extra)
    p = Path(out) / "e2e-partial.json"
    if p.exists():
        p.unlink()
    for line in doc_extra["headline"]:
        log(line)
    log(f"wrote {path}" + (f"; {len(res.failures)} failure(s)" if res.failures else ""))
    return 1 if res.failures and not res.rows else 0


if __name__ == "__main__":
    sys.exit(main())
