#!/usr/bin/env python
"""End-to-end benchmark: a Llama-3.1-8B-shaped model, motensor (NVFP4, W4A16_AWQ) vs bf16 transformers.

One command on a GPU machine (from the repository root, after ``./scripts/setup.sh``)::

    .venv/bin/python benches/e2e.py

writes ``benches/results/e2e-<gpu>-<YYYYMMDD>.json`` (shared/BENCHMARKS.md) and a PNG beside it.

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
"""
from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benches"))

import torch  # noqa: E402

import synthetic  # noqa: E402  (benches/synthetic.py)

FULL = dict(shape="8b", device="cuda", prompt=128, new_tokens=256, batches=(1, 16), prefill=2048, repeat=3,
            compile_backend="inductor", compile_mode="reduce-overhead")
SMOKE = dict(shape="tiny", device="cpu", prompt=16, new_tokens=6, batches=(1, 2), prefill=64, repeat=1,
             compile_backend="aot_eager", compile_mode=None)


def log(*a) -> None:
    print(f"[e2e {time.strftime('%H:%M:%S')}]", *a, flush=True)


# -- machine -------------------------------------------------------------------------------------
def gpu_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"


def gpu_short(name: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"h100"`` (the file-name part, shared/BENCHMARKS.md)."""
    name = name.lower()
    m = re.search(r"\b(gb\d{3}|[abhlt]\d{1,3}s?|rtx ?\d{4}|v100)\b", name)
    return re.sub(r"[^a-z0-9]", "", m.group(1)) if m else re.sub(r"[^a-z0-9]+", "-", name).strip("-")


def machine(device: torch.device) -> dict:
    import motensor

    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
        sha += "-dirty" if dirty.strip() else ""
    except Exception:
        sha = "unknown"
    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = None
    import transformers

    return {"gpu": gpu_name(device), "torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton_version,
            "transformers": transformers.__version__, "cpus": os.cpu_count(), "motensor": f"{motensor.__version__}+{sha}"}


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
    def __init__(self, shape: str):
        self.shape = shape
        self.rows: list[dict] = []
        self.failures: list[dict] = []

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
    p.add_argument("--no-compiled", action="store_true", help="skip the static-cache + torch.compile impls")
    p.add_argument("--no-hf", action="store_true", help="skip the bf16 transformers baselines")
    p.add_argument("--no-hf-load", action="store_true", help="skip transformers' load-to-first-token (16 GB bf16 write)")
    args = p.parse_args(argv)

    cfg = dict(SMOKE if args.smoke else FULL)
    if args.repeat:
        cfg["repeat"] = args.repeat
    device = torch.device(cfg["device"])
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA GPU: run with --smoke for the CPU harness check")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    out = args.out or (Path(tempfile.mkdtemp(prefix="motensor-e2e-")) if args.smoke else ROOT / "benches" / "results")
    cache = args.cache_dir or (out / ".cache" if args.smoke else synthetic.CACHE_DIR)
    compiled = not args.no_compiled

    res = Results(cfg["shape"])
    started = dt.datetime.now(dt.timezone.utc)
    for fmt in args.formats:
        res.attempt(f"motensor {fmt}", lambda fmt=fmt: bench_motensor(res, fmt, cfg, cache, device, compiled))
    if not args.no_hf:
        res.attempt("hf bf16", lambda: bench_hf(res, cfg, cache, device, compiled, not args.no_hf_load,
                                                args.formats[0]))

    doc = {
        "bench": "e2e",
        "when": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "python " + " ".join([os.path.relpath(__file__, ROOT), *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine(device),
        "note": (f"{cfg['shape']} Llama-3.1 shape, random weights; decode: greedy generate, prompt {cfg['prompt']}, "
                 f"{cfg['new_tokens']} new tokens, tok/s = batch*(new-1)/(t(new)-t(1)); prefill: one forward of "
                 f"{cfg['prefill']} tokens; best of {cfg['repeat']} after a warm-up; compiled = static cache + "
                 f"torch.compile({cfg['compile_backend']}, {cfg['compile_mode']}) via transformers CompileConfig"),
        "rows": res.rows,
    }
    if res.failures:
        doc["failures"] = res.failures
    out.mkdir(parents=True, exist_ok=True)
    stem = f"e2e-{gpu_short(gpu_name(device)) if device.type == 'cuda' else 'cpu'}-{started.strftime('%Y%m%d')}"
    json_path = out / f"{stem}.json"
    json_path.write_text(json.dumps(doc, indent=2) + "\n")
    png_path = out / f"{stem}.png"
    plot(doc, png_path)
    log(f"wrote {json_path} and {png_path}" + (f"; {len(res.failures)} failure(s)" if res.failures else ""))
    return 1 if res.failures and not res.rows else 0


# -- the picture -----------------------------------------------------------------------------------
def plot(doc: dict, path: Path) -> None:
    """One panel per case, one bar per impl. matplotlib if installed, else a built-in PNG writer."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _plot_builtin(doc, path)
        return
    cases = list(dict.fromkeys(r["case"] for r in doc["rows"]))
    fig, axes = plt.subplots(1, max(1, len(cases)), figsize=(4.2 * max(1, len(cases)), 4.2), squeeze=False)
    for ax, case in zip(axes[0], cases):
        rows = [r for r in doc["rows"] if r["case"] == case]
        ax.barh([r["impl"] for r in rows], [r["value"] for r in rows], color=[_color(r["impl"], hexa=True) for r in rows])
        ax.set_title(f"{case} ({rows[0]['metric']})", fontsize=9)
        ax.tick_params(labelsize=7)
        for i, r in enumerate(rows):
            ax.text(r["value"], i, f" {r['value']:.3g}", va="center", fontsize=7)
    fig.suptitle(f"motensor e2e on {doc['machine']['gpu']} ({doc['when'][:10]})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


_PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (127, 127, 127)]
_IMPL_ORDER: list[str] = []


def _color(impl: str, hexa: bool = False):
    if impl not in _IMPL_ORDER:
        _IMPL_ORDER.append(impl)
    c = _PALETTE[_IMPL_ORDER.index(impl) % len(_PALETTE)]
    return "#%02x%02x%02x" % c if hexa else c


# 3x5 pixel glyphs, rows top to bottom, 3 bits each (bit 2 = left column).
_FONT = {
    "0": "75557", "1": "26227", "2": "71747", "3": "71717", "4": "55711", "5": "74717", "6": "74757", "7": "71111",
    "8": "75757", "9": "75717", "A": "25755", "B": "65656", "C": "34443", "D": "65556", "E": "74647", "F": "74644",
    "G": "34553", "H": "55755", "I": "72227", "J": "11157", "K": "55655", "L": "44447", "M": "57555", "N": "65555",
    "O": "25552", "P": "65644", "Q": "25573", "R": "65655", "S": "34216", "T": "72222", "U": "55557", "V": "55552",
    "W": "55575", "X": "55255", "Y": "55222", "Z": "71247", ".": "00002", "-": "00700", "_": "00007", "/": "11244",
    "(": "24442", ")": "42224", ":": "02020", " ": "00000", "=": "07070", "+": "02720",
}


def _plot_builtin(doc: dict, path: Path) -> None:
    cases = list(dict.fromkeys(r["case"] for r in doc["rows"])) or ["(no results)"]
    impls = list(dict.fromkeys(r["impl"] for r in doc["rows"]))
    s = 2  # pixel scale of the font
    bar_h, gap, panel_w, label_w = 14, 4, 300, 10
    panel_h = 40 + len(impls) * (bar_h + gap)
    width = 20 + max(2, len(cases)) * (panel_w + 20)
    height = 40 + panel_h + 20 + len(impls) * (bar_h + gap)
    img = bytearray(b"\xff" * (width * height * 3))

    def rect(x0, y0, w, h, c):
        for y in range(max(0, y0), min(height, y0 + h)):
            row = y * width * 3
            for x in range(max(0, x0), min(width, x0 + w)):
                img[row + 3 * x: row + 3 * x + 3] = bytes(c)

    def text(x, y, t, c=(0, 0, 0)):
        for ch in t.upper():
            glyph = _FONT.get(ch, _FONT[" "])
            for ry, bits in enumerate(glyph):
                v = int(bits)
                for rx in range(3):
                    if v & (4 >> rx):
                        rect(x + rx * s, y + ry * s, s, s, c)
            x += 4 * s

    text(10, 10, f"MOTENSOR E2E {doc['machine']['gpu']} {doc['when'][:10]}"[:120])
    for ci, case in enumerate(cases):
        x0, y0 = 20 + ci * (panel_w + 20), 40
        rows = {r["impl"]: r for r in doc["rows"] if r["case"] == case}
        metric = next(iter(rows.values()))["metric"] if rows else ""
        text(x0, y0, f"{case} {metric}")
        vmax = max([r["value"] for r in rows.values()] + [1e-9])
        for ii, impl in enumerate(impls):
            r = rows.get(impl)
            if r is None:
                continue
            y = y0 + 20 + ii * (bar_h + gap)
            w = max(1, int((panel_w - 80) * r["value"] / vmax))
            rect(x0 + label_w, y, w, bar_h, _color(impl))
            text(x0 + label_w + w + 4, y + 2, f"{r['value']:.3g}")
    ly = 40 + panel_h + 10
    for ii, impl in enumerate(impls):
        y = ly + ii * (bar_h + gap)
        rect(20, y, bar_h, bar_h, _color(impl))
        text(20 + bar_h + 8, y + 2, impl)

    raw = b"".join(b"\x00" + bytes(img[y * width * 3:(y + 1) * width * 3]) for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", width.to_bytes(4, "big") + height.to_bytes(4, "big") + b"\x08\x02\x00\x00\x00")
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    path.write_bytes(png)


if __name__ == "__main__":
    sys.exit(main())
