"""The benchmark runs and writes sane records. Timings are never asserted: they belong to the benchmark.

Tiny backbones (2 layers, width 32) from configs written here; the real vocabularies,
so SST-2 text from MINIDEPT_DATA can be tokenised when it is there.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minidept.tools.bench.__main__ import parse_args, plan_methods, peer_available
from minidept.tools.bench.measure import KEEP_FREED_MEMORY, measure, run_worker
from minidept.tools.bench.report import add_ratios, format_references, format_table
from minidept.tools.bench.workloads import (BACKBONES, Method, Spec, collate, parse_method, read_backbone_configs,
                                      write_random_backbone)
from minidept.methods import budget

ROOT = Path(__file__).resolve().parent.parent


def tiny_configs(folder: Path) -> Path:
    from minidept.models.gpt2 import GPT2Config
    from minidept.models.llama import LlamaConfig
    from minidept.models.t5 import T5Config

    folder.mkdir(parents=True, exist_ok=True)
    t5 = T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4)
    gpt2 = GPT2Config(n_embd=32, n_layer=2, n_head=4)
    llama = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, pad_token_id=0)
    (folder / "t5-small.config.json").write_text(json.dumps(t5.to_hf_config()))
    (folder / "gpt2.config.json").write_text(json.dumps(gpt2.to_hf_config()))
    (folder / "llama-100m.config.json").write_text(json.dumps(llama.to_hf_config()))
    return folder


def run_bench(*args, timeout=600):
    done = subprocess.run([sys.executable, "-m", "minidept.bench", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def check_record(record):
    assert "error" not in record, record
    for field in ("backbone", "workload", "regime", "method", "impl", "batch", "threads", "step_s",
                  "samples_per_s", "step_times", "step_spread", "load_average", "baseline_rss_mb",
                  "peak_rss_mb", "memory_mb", "machine"):
        assert field in record, (field, record)
    assert record["step_s"] > 0 and all(t > 0 for t in record["step_times"])
    assert record["step_spread"] >= 0
    assert math.isclose(record["samples_per_s"], record["batch"] / record["step_s"], rel_tol=1e-9)
    assert record["peak_rss_mb"] >= record["baseline_rss_mb"] > 0
    if record["memory_reset"]:
        assert math.isclose(record["memory_mb"], record["peak_rss_mb"] - record["baseline_rss_mb"])


def by_key(records):
    return {(r["backbone"], r["workload"], r["regime"], r["method"], r["impl"]): r for r in records}


# --------------------------------------------------------------------------- #
# Pieces, in process
# --------------------------------------------------------------------------- #

def test_parse_method():
    assert parse_method("pt") == Method("pt", "pt", 100)
    assert parse_method("pt60").length == 60
    assert parse_method("dept0") == Method("dept0", "dept", 0)
    assert parse_method("adept60-folded").folded
    assert parse_method("none").length == 0
    for bad in ("lora", "dept120", "dept60-folded", "none5"):
        with pytest.raises(ValueError, match=bad):
            parse_method(bad)


def test_bad_options_are_rejected():
    for argv in (["--methods", "lora"], ["--backbones", "t5-large"], ["--workloads", "generate"],
                 ["--steps", "0"]):
        with pytest.raises(SystemExit):
            parse_args(argv)


def test_workers_keep_freed_memory_unless_told_not_to(monkeypatch):
    seen = []

    class TimedOut:
        pid, returncode = 2**22 + 1, None   # above Linux's largest pid: no process group to kill

        def __init__(self, command, env, **kwargs):
            seen.append(env)
            self.command = command

        def communicate(self, timeout=None):
            if timeout is not None:
                raise subprocess.TimeoutExpired(self.command, timeout)
            return "", ""

    monkeypatch.setattr("minidept.tools.bench.measure.subprocess.Popen", TimedOut)
    for argv in ([], ["--return-memory"]):
        args = parse_args(argv + ["--backbones", "gpt2", "--workloads", "train", "--regimes", "pad256",
                                  "--methods", "pt", "--impls", "minidept"])
        [spec] = plan_methods(args)
        assert spec.keep_freed_memory == (argv == [])
        assert "error" in run_worker(spec, timeout=1)
    assert all(seen[0][k] == v for k, v in KEEP_FREED_MEMORY.items())
    assert not set(KEEP_FREED_MEMORY) & set(seen[1]) - set(os.environ)


def worker_pids(seed: int) -> list[int]:
    """The running bench workers whose Spec has this seed (/proc)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            command = cmdline.read_bytes().split(b"\0")
            state = (cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if b"minidept.tools.bench.measure" in command and f'"seed": {seed},'.encode() in b" ".join(command) \
                and state != "Z":
            pids.append(int(cmdline.parent.name))
    return pids


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_a_worker_past_its_timeout_is_killed_not_left_running(tmp_path):
    configs = read_backbone_configs(tiny_configs(tmp_path / "configs"), ["gpt2"])
    folder = write_random_backbone(configs["gpt2"], tmp_path / "gpt2", seed=0)
    seed = 424242   # marks this test's worker among the machine's processes
    spec = Spec("methods", "gpt2", str(folder), "gpt2", "train", "pad256", "pt", "minidept", batch=2, length=16,
                warmup=0, steps=1, threads=1, seed=seed, data_dir=None)
    check_record({**run_worker(spec, timeout=600), "machine": {}})   # the worker runs (this copy of minidept)
    spec.steps = 20_000   # a minute or more
    try:
        assert run_worker(spec, timeout=3)["error"] == "timed out after 3 s"
        deadline = time.monotonic() + 10
        while worker_pids(seed) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert worker_pids(seed) == []
    finally:   # the old behaviour must not leave it behind
        for pid in worker_pids(seed):
            os.kill(pid, signal.SIGKILL)


def test_ctrl_c_and_bad_configs_are_one_line_and_unwritable_output_is_refused_before_measuring(
        tmp_path, monkeypatch, capsys, read_only, full_disk):
    from minidept.tools.bench import __main__ as bench

    def interrupted(spec, timeout):
        raise KeyboardInterrupt
    monkeypatch.setattr(bench, "run_worker", interrupted)
    configs = tiny_configs(tmp_path / "configs")
    few = ["--configs-dir", str(configs), "--backbones", "gpt2", "--workloads", "train", "--regimes", "pad256",
           "--methods", "pt", "--impls", "minidept"]
    assert bench.main(few) == 130
    assert capsys.readouterr().err.endswith("python -m minidept.bench: interrupted\n")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "gpt2.config.json").write_text("{not json")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "gpt2.config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": "wide"}))
    for folder, message in ((tmp_path / "nowhere", "--configs-dir {}: not a folder"),
                            (tmp_path / "broken", "--configs-dir: cannot read {}/gpt2.config.json"),
                            (tmp_path / "empty", "--configs-dir: no config for backbone 'gpt2'"),
                            (tmp_path / "odd", "backbone gpt2: its config cannot build a model")):
        (tmp_path / "empty").mkdir(exist_ok=True)
        code = None
        try:
            code = bench.main([*few, "--configs-dir", str(folder)])
        except SystemExit as exit:
            code = exit.code
        err = capsys.readouterr().err
        assert code == 2 and message.format(folder) in err and err.count("\n") == 1, err

    def measured(spec, timeout):
        raise AssertionError("measured before finding that --json cannot be written")
    monkeypatch.setattr(bench, "run_worker", measured)
    for path in (read_only / "bench.json", full_disk / "bench.json"):
        with pytest.raises(SystemExit) as exit:
            bench.main([*few, "--json", str(path)])
        err = capsys.readouterr().err
        assert exit.value.code == 2 and f"--json {path}" in err and err.count("\n") == 1, err
    assert not (full_disk / "bench.json").exists() and list(read_only.iterdir()) == []


def test_the_padded_regime_is_named_with_its_length_and_only_256_stands_beside_the_paper():
    records = [{"backbone": "t5-small", "workload": "train", "regime": "pad256", "method": method, "impl": "minidept",
                "input_tokens": 64, "prompt_tokens": length, "step_s": step, "samples_per_s": 4 / step,
                "memory_mb": 100.0, "length": 64} for method, length, step in (("pt", 100, 1.0), ("dept60", 60, 0.8))]
    add_ratios(records)
    rows = [line.split("|")[3].strip() for line in format_table(records).splitlines()[2:]]
    assert rows == ["pad64", "pad64"] and format_references(records) == ""
    for record in records:   # the same at the paper's 256 (or records written before the length was kept)
        del record["length"]
    assert [line.split("|")[3].strip() for line in format_table(records).splitlines()[2:]] == ["pad256", "pad256"]
    assert "t5-small train time, dept60 / pt" in format_references(records)


def test_quick_plan_reads_the_built_in_configs_without_a_data_folder(tmp_path, monkeypatch):
    """A fresh clone benchmarks with no data folder: configs built in, synthetic inputs."""
    from minidept.models.gpt2 import GPT2Config
    from minidept.models.t5 import T5Config

    monkeypatch.delenv("MINIDEPT_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    args = parse_args(["--quick"])
    assert args.configs_dir is None and args.data_dir is None
    configs = read_backbone_configs(args.configs_dir, args.backbones)
    assert set(configs) == {"t5-small", "gpt2"}
    assert T5Config.from_hf_config(configs["t5-small"]) == T5Config(
        vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_decoder_layers=6, num_heads=8)
    assert GPT2Config.from_hf_config(configs["gpt2"]) == GPT2Config(
        vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)
    base = T5Config.from_hf_config(read_backbone_configs(None, ["t5-base"])["t5-base"])
    assert (base.d_model, base.d_ff, base.num_layers, base.num_decoder_layers, base.num_heads) == \
        (768, 3072, 12, 12, 12)


def test_built_in_configs_match_the_downloaded_ones(data_dir):
    """The built-in hyper-parameters are those of the real config.json files (where the data folder has them)."""
    from minidept.models.gpt2 import GPT2Config
    from minidept.models.t5 import T5Config

    folder = data_dir / "configs"
    if not (folder / "t5-small.config.json").is_file():
        pytest.skip(f"no configs in {folder}")
    names = [name for name in BACKBONES if name != "llama-100m"]   # no released Llama has that size
    built_in, downloaded = read_backbone_configs(None, names), read_backbone_configs(folder, names)
    for name in names:
        config_class = T5Config if built_in[name]["model_type"] == "t5" else GPT2Config
        assert config_class.from_hf_config(built_in[name]) == config_class.from_hf_config(downloaded[name]), name


def test_t5_base_config_is_derived_from_t5_small(tmp_path):
    configs = read_backbone_configs(tiny_configs(tmp_path), ["t5-base"])
    assert configs["t5-base"]["d_model"] == 768 and configs["t5-base"]["num_layers"] == 12
    with pytest.raises(ValueError, match="--configs-dir"):
        read_backbone_configs(tmp_path / "nowhere", ["gpt2"])


def test_collate_is_the_training_commands_padded_either_way():
    t5_rows = [{"input_ids": [5, 6, 7], "labels": [9, 1]}, {"input_ids": [5], "labels": [8, 1]}]
    t5 = collate(t5_rows, "t5", None, pad_id=0)
    assert t5["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]] and t5["labels"].tolist() == [[9, 1], [8, 1]]
    padded = collate(t5_rows, "t5", 6, pad_id=0)
    assert padded["attention_mask"].sum(1).tolist() == [3, 1] and padded["input_ids"].shape == (2, 6)
    gpt2_rows = [{"input_ids": [5, 6, 7, 9, 1], "labels": [-100, -100, -100, 9, 1], "prompt_length": 3},
                 {"input_ids": [5, 8, 1], "labels": [-100, 8, 1], "prompt_length": 1}]
    gpt2 = collate(gpt2_rows, "gpt2", None, pad_id=0)
    assert gpt2["input_ids"].tolist() == [[5, 6, 7, 9, 1], [5, 8, 1, 0, 0]]
    assert gpt2["labels"].tolist() == [[-100, -100, -100, 9, 1], [-100, 8, 1, -100, -100]]
    left = collate(gpt2_rows, "gpt2", None, pad_id=0, source_only=True, left=True)
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 0, 5]] and left["attention_mask"].tolist() == [[1, 1, 1],
                                                                                                         [0, 0, 1]]


def test_real_sentences_are_cast_as_the_training_command_casts_them(data_dir):
    from minidept import load_tokenizer
    from minidept.data.load import encode_examples, load_official_splits
    from minidept.tools.bench.workloads import make_examples

    rows, source = make_examples("t5", 4, 0, str(data_dir), 32128, 256)
    assert source == "sst2"
    sentences = load_official_splits("sst2", data_dir)["train"]
    tokenizer = load_tokenizer(data_dir / "t5-tokenizer")
    for row in rows:   # each row is one of the library's encodings of an SST-2 training sentence
        decoded = tokenizer.decode(row["input_ids"], skip_special_tokens=True)
        assert decoded.startswith("sentence: ")
        example = next(e for e in sentences if tokenizer.decode(tokenizer.encode("sentence: " + e["sentence"]).ids,
                                                                 skip_special_tokens=True) == decoded)
        assert row == encode_examples("sst2", [example], tokenizer, 256, False, 1)[0][0]


def test_ratios_follow_the_figures_and_the_paper_stands_beside_them():
    def record(method, impl, step_s, memory, backbone="t5-base", regime="pad256", workload="train"):
        return {"backbone": backbone, "workload": workload, "regime": regime, "method": method, "impl": impl,
                "step_s": step_s, "samples_per_s": 16 / step_s, "memory_mb": memory}
    records = [record("pt", "minidept", 8.0, 1000.0), record("pt", "peer", 10.0, 1200.0),
               record("dept60", "minidept", 6.0, 800.0), record("dept60", "minidept", 1.0, 100.0, regime="dynamic"),
               record("dept20", "minidept", 7.0, 900.0),
               record("pt", "minidept", 4.0, 500.0, workload="infer"),
               record("dept20", "minidept", 2.5, 400.0, workload="infer"),
               {"backbone": "t5-base", "workload": "train", "regime": "pad256", "method": "ept60",
                "impl": "minidept", "error": "boom"}]
    add_ratios(records)
    pt, _, dept, dynamic, *_ = records
    assert pt["time_vs_peer"] == pytest.approx(0.8) and pt["memory_vs_peer"] == pytest.approx(1000 / 1200)
    assert dept["time_vs_pt"] == pytest.approx(0.75) and dept["memory_vs_pt"] == pytest.approx(0.8)
    assert dynamic["speed_vs_pad256"] == pytest.approx(6.0)
    assert "error: boom" in format_table(records)
    references = format_references(records)
    # DePT m > 20 beside the paper's training figure (m = 20 is not), DePT m = 20 beside its inference figure
    assert "| t5-base train time, dept60 / pt | about 0.75 (m > 20) | 0.75 | - |" in references
    assert "| t5-base train memory, dept60 / pt | about 0.75 (m > 20) | 0.80 | - |" in references
    assert "train time, dept20" not in references
    assert "| t5-base infer samples/s, dept20 / pt | 1.13 | 1.60 | - |" in references
    assert format_references(add_ratios([record("dept60", "minidept", 6.0, 800.0)])) == ""   # no PT beside it


def test_help_says_what_the_defaults_measure(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = capsys.readouterr().out
    assert "methods (default):" in text and "every method on t5-small" in text and "built-in" in text
    assert "DEFAULT_PLAN" not in text and "bench.py" not in text and "issue" not in text.lower()


def test_output_names_no_verdicts():
    """The tool prints measurements, ratios and reference figures; judging them belongs in the docs."""
    records = [{"backbone": b, "workload": w, "regime": "pad256", "method": m, "impl": i, "step_s": 1.0,
                "samples_per_s": 16.0, "memory_mb": 100.0, "step_spread": 0.1}
               for b in BACKBONES for w in ("train", "infer") for m in ("none", "pt", "pt60", "dept20", "dept60")
               for i in ("minidept", "peer")]
    add_ratios(records)
    text = format_table(records) + format_references(records)
    words = set(text.lower().replace("|", " ").replace(",", " ").split())
    assert not words & {"issue", "target", "targets", "met", "yes", "pass", "fail"}, words


@pytest.mark.parametrize("regime", ["dynamic", "grouped"])
def test_measure_in_process(tmp_path, regime):
    """The worker's measurement itself, without a subprocess: a DePT training step on a tiny T5."""
    configs = read_backbone_configs(tiny_configs(tmp_path / "configs"), ["t5-small"])
    folder = write_random_backbone(configs["t5-small"], tmp_path / "t5", seed=0)
    spec = Spec("methods", "t5-small", str(folder), "t5", "train", regime, "dept60", "minidept",
                      batch=2, length=32, warmup=1, steps=2, threads=1, seed=0,
                      data_dir=os.environ.get("MINIDEPT_DATA"))
    from minidept.run import fastpath

    with fastpath.switched(False):
        record = measure(spec)
        assert fastpath.enabled()   # minidept's training step is measured as the training command runs it
    record["machine"] = {}
    check_record(record)
    assert len(record["step_times"]) == 2 and len(record["warmup_times"]) == 1
    assert record["r"] == budget("dept", 100, 60, 32, 32) and record["trainable_params"] <= 100 * 32
    assert record["max_abs_diff_vs_pad256"] < 1e-4  # dynamic padding: same outputs on real tokens
    assert math.isfinite(record["last_output"])


@pytest.mark.parametrize("impl,method", [("minidept", "pt"), ("minidept", "adept60-folded"), ("peer", "pt"),
                                         ("peer", "dept60")])
def test_measure_inference_in_process(tmp_path, impl, method):
    """GPT-2 inference steps (generation of 2 tokens) for both implementations."""
    if impl == "peer":
        pytest.importorskip("peft")
    configs = read_backbone_configs(tiny_configs(tmp_path / "configs"), ["gpt2"])
    folder = write_random_backbone(configs["gpt2"], tmp_path / "gpt2", seed=0)
    spec = Spec("methods", "gpt2", str(folder), "gpt2", "infer", "pad256", method, impl,
                      batch=3, length=24, warmup=0, steps=1, threads=1, seed=0, data_dir=None)
    record = measure(spec)
    record["machine"] = {}
    check_record(record)
    assert record["data"] == "synthetic" and record["input_tokens"] == 24
    assert record["last_output"][0] == 3  # a (batch, tokens) shape


@pytest.mark.parametrize("backbone,impl,method,checkpointing", [
    ("t5-small", "minidept", "dept60", False), ("t5-small", "peer", "pt", False), ("gpt2", "minidept", "pt", False),
    ("gpt2", "peer", "dept60", False), ("llama-100m", "minidept", "dept60", True), ("llama-100m", "peer", "pt", True)])
def test_measure_with_a_bfloat16_backbone(tmp_path, backbone, impl, method, checkpointing):
    """--dtype bfloat16 (the GPU table's second column) runs on the CPU too: float32 adapters in front;
    the Llama rows with --activation-checkpointing (minidept's, and transformers' gradient checkpointing)."""
    if impl == "peer":
        pytest.importorskip("peft")
    configs = read_backbone_configs(tiny_configs(tmp_path / "configs"), [backbone])
    folder = write_random_backbone(configs[backbone], tmp_path / backbone, seed=0)
    spec = Spec("methods", backbone, str(folder), configs[backbone]["model_type"], "train", "pad256", method,
                      impl, batch=2, length=16, warmup=0, steps=1, threads=1, seed=0, data_dir=None,
                      dtype="bfloat16", checkpointing=checkpointing)
    record = measure(spec)
    record["machine"] = {}
    check_record(record)
    assert record["dtype"] == "bfloat16" and record["device"] == "cpu" and record["checkpointing"] == checkpointing
    assert math.isfinite(record["last_output"])


def test_cuda_is_refused_with_the_fix_where_torch_sees_no_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    with pytest.raises(SystemExit):
        parse_args(["--device", "cuda"])
    args = parse_args(["--dtype", "bfloat16", "--backbones", "gpt2", "--workloads", "train", "--regimes", "pad256",
                       "--methods", "pt", "--impls", "minidept"])
    [spec] = plan_methods(args)
    assert (spec.device, spec.dtype) == ("cpu", "bfloat16")


# --------------------------------------------------------------------------- #
# The command line, end to end (each measurement in its own process)
# --------------------------------------------------------------------------- #

@pytest.mark.slow
def test_quick_methods_run_writes_sane_records(tmp_path):
    pytest.importorskip("matplotlib")
    configs = tiny_configs(tmp_path / "configs")
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    # --quick's training half (inference is measured in process below, to keep CI short)
    done = run_bench("--quick", "--workloads", "train", "--configs-dir", str(configs), "--threads", "1",
                     "--json", str(out), "--plot", str(png))
    records = json.loads(out.read_text())
    peer = peer_available()
    expected = {(b, "train", "pad256", m, "minidept") for b in ("t5-small", "gpt2") for m in ("pt", "dept60")}
    expected |= {(b, "train", regime, "dept60", "minidept") for b in ("t5-small", "gpt2")
                 for regime in ("dynamic", "grouped")}
    if peer:
        expected |= {(b, "train", "pad256", "pt", "peer") for b in ("t5-small", "gpt2")}
    keyed = by_key(records)
    assert set(keyed) == expected and len(records) == len(expected)
    for record in records:
        check_record(record)
        assert record["batch"] == 4 and record["threads"] == 1
    for b in ("t5-small", "gpt2"):
        pt, dept = keyed[(b, "train", "pad256", "pt", "minidept")], keyed[(b, "train", "pad256", "dept60", "minidept")]
        assert pt["prompt_tokens"] == 100 and dept["prompt_tokens"] == 60
        assert dept["time_vs_pt"] == pytest.approx(dept["step_s"] / pt["step_s"])
        dynamic = keyed[(b, "train", "dynamic", "dept60", "minidept")]
        assert dynamic["speed_vs_pad256"] == pytest.approx(dynamic["samples_per_s"] / dept["samples_per_s"])
        assert dynamic["input_tokens"] <= dept["input_tokens"] == 64
        assert dynamic["max_abs_diff_vs_pad256"] < 1e-4
        grouped = keyed[(b, "train", "grouped", "dept60", "minidept")]
        assert grouped["input_tokens"] < dynamic["input_tokens"]   # batches of similar length: fewer pads
        assert grouped["real_tokens"] > 0 and grouped["speed_vs_pad256"] > 0
        if peer:
            theirs = keyed[(b, "train", "pad256", "pt", "peer")]
            assert pt["time_vs_peer"] == pytest.approx(pt["step_s"] / theirs["step_s"])
            assert theirs["trainable_params"] == pt["trainable_params"] == 100 * 32
    assert "| backbone | workload |" in done.stdout and "| t5-small | train | pad64 | pt | minidept | 164 |" in done.stdout
    assert "| ratio | paper |" not in done.stdout   # padded to 64: no figure of the paper's (256) stands beside it
    assert "issue" not in done.stdout.lower() and "target" not in done.stdout.lower()
    assert png.stat().st_size > 0

    # --merge: a second run adds (or replaces) its rows and keeps the others
    run_bench("--quick", "--configs-dir", str(configs), "--threads", "1", "--json", str(out), "--merge",
              "--backbones", "gpt2", "--workloads", "train", "--regimes", "pad256", "--methods", "dept20",
              "--impls", "minidept")
    merged = by_key(json.loads(out.read_text()))
    assert set(merged) == expected | {("gpt2", "train", "pad256", "dept20", "minidept")}
    assert merged[("t5-small", "train", "pad256", "pt", "minidept")] == keyed[("t5-small", "train", "pad256",
                                                                               "pt", "minidept")]


@pytest.mark.slow
def test_quick_models_run_compares_with_transformers(tmp_path):
    pytest.importorskip("transformers")
    configs = tiny_configs(tmp_path / "configs")
    out = tmp_path / "models.json"
    run_bench("models", "--quick", "--configs-dir", str(configs), "--backbones", "gpt2",
              "--workloads", "infer,generate", "--threads", "1", "--json", str(out))
    keyed = by_key(json.loads(out.read_text()))
    assert set(keyed) == {("gpt2", w, "random", "model", i) for w in ("infer", "generate")
                          for i in ("minidept", "transformers")}
    for record in keyed.values():
        check_record(record)
    ours, theirs = (keyed[("gpt2", "infer", "random", "model", i)] for i in ("minidept", "transformers"))
    assert ours["time_vs_peer"] == pytest.approx(ours["step_s"] / theirs["step_s"])
    # the same weights and inputs: the same loss and the same greedy tokens
    assert ours["last_output"] == pytest.approx(theirs["last_output"], rel=1e-4)
    ours, theirs = (keyed[("gpt2", "generate", "random", "model", i)] for i in ("minidept", "transformers"))
    assert ours["last_output"] == theirs["last_output"]
