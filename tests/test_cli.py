"""The ``motensor`` command line: inspect, load, generate, bench (CPU, on the checked-in fixtures)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers.fixtures import DATA
from motensor.cli import build_parser, main


def first_fixture(*names: str) -> Path:
    for n in names:
        if (DATA / n / "config.json").is_file():
            return DATA / n
    pytest.skip(f"none of the fixtures {names} in {DATA}")


def with_tokenizer() -> Path:
    return first_fixture("llama-nvfp4", "demo", "llama-w4a16_awq")  # the smallest first


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("inspect", "load", "generate", "bench"):
        assert cmd in out
    assert "examples:" in out


@pytest.mark.parametrize("cmd", ["inspect", "load", "generate", "bench"])
def test_subcommand_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    assert "path" in capsys.readouterr().out


def test_generate_requires_a_prompt(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["generate", "somewhere"])
    assert e.value.code == 2
    assert "--prompt" in capsys.readouterr().err


def test_inspect(capsys):
    path = first_fixture("demo", "llama-nvfp4")
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "NVFP4" in out and "model.layers.0.mlp.down_proj" in out


def test_load_reports_speed_and_formats(capsys):
    path = first_fixture("llama-nvfp4", "demo")
    assert main(["load", str(path), "--device", "cpu", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "GB/s" in out
    assert "NVFP4" in out and "quantized modules:" in out


def test_load_model(capsys):
    path = first_fixture("qwen3moe-nvfp4", "llama-nvfp4")
    assert main(["load", str(path), "--device", "cpu", "--model", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "ForCausalLM" in out and "NVFP4" in out and "unquantized Linear" in out


def test_generate_prints_the_text(capsys):
    path = with_tokenizer()
    prompt = "And God said unto Moses,"
    assert main(["generate", str(path), "--prompt", prompt, "-n", "8", "--device", "cpu"]) == 0
    cap = capsys.readouterr()
    assert cap.out.startswith(prompt)
    assert len(cap.out.strip()) > len(prompt)
    assert "tok/s" in cap.err  # the timing line goes to stderr, the text alone to stdout


def test_generate_without_tokenizer_is_a_clear_error(capsys, tmp_path):
    src = with_tokenizer()
    path = tmp_path / "no-tokenizer"
    shutil.copytree(src, path, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens_map.json"))
    assert main(["generate", str(path), "--prompt", "hi", "--device", "cpu"]) == 2
    assert "tokenizer" in capsys.readouterr().err


def test_bench_json(capsys):
    path = first_fixture("llama-w4a16_awq", "llama-nvfp4", "demo")  # weight-only runs fastest on a CPU
    argv = ["bench", str(path), "--device", "cpu", "--prompt-len", "8", "--new-tokens", "3", "--prefill-len", "16",
            "--repeat", "1", "--json"]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    metrics = {r["metric"]: r["value"] for r in doc["rows"]}
    for key in ("load_s", "load_GB/s", "load_to_first_token_s", "decode_b1_tok/s", "prefill_16_tok/s"):
        assert metrics[key] > 0, key
    assert build_parser().parse_args(["bench", "x", "--batch", "1", "16"]).batch == [1, 16]


def test_error_exit_code(capsys, tmp_path):
    assert main(["inspect", str(tmp_path)]) == 2
    assert "motensor: error:" in capsys.readouterr().err
