"""Tests of the command line (trilevel.cli): end-to-end runs in subprocesses (console script,
``python -m trilevel``, ``torchrun`` with two CPU processes, SIGTERM) and option handling in
process (YAML config files, precedence, bad values, missing data).

Runs are tiny: a 4-block, 32-wide ViT on 7x7 patches of 256 Fashion-MNIST training images,
500 validation images, on the CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trilevel import cli
from trilevel.checkpoint import load_checkpoint
from trilevel.cli.train import parse_train_config
from trilevel.training.config import load_config_file

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_data = pytest.mark.skipif(
    not (FMNIST / "train-images-idx3-ubyte.gz").exists(), reason="Fashion-MNIST not installed (scripts/setup.sh)"
)

TINY_FLAGS = [
    "--model", "vit_tiny_patch16_224", "--embed-dim", "32", "--depth", "4", "--num-heads", "2",
    "--patch-size", "7", "--train-subset", "256", "--val-subset", "500", "--batch-size", "32",
    "--warmup-epochs", "0.5", "--workers", "0", "--device", "cpu", "--log-interval", "2",
    "--example-update-every", "1",
]


def _env() -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    return env


def run_cli(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "trilevel", *args], capture_output=True, text=True, env=_env(), timeout=timeout
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SUMMARY_FIELDS = {
    "val_top1", "train_seconds", "epochs", "train_images", "relative_train_flops", "keep_ratio",
    "attn_keep_ratio", "prune_layers", "selector", "eval_keep_ratio", "eval_attn_keep_ratio", "world_size",
    "selector_digest", "dense", "example_remove", "example_swap",
}
METRIC_FIELDS = {
    "epoch", "train_loss", "train_acc", "val_top1", "epoch_seconds", "train_images_per_s", "active_examples",
    "mean_tokens_per_block", "keep_ratio", "attn_keep_ratio", "lr",
}


@pytest.fixture(scope="module")
def trilevel_run(tmp_path_factory):
    """``trilevel train`` (the console script when installed) for 2 epochs, tri-level defaults."""
    out = tmp_path_factory.mktemp("cli") / "tri"
    exe = shutil.which("trilevel", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "trilevel"]
    proc = subprocess.run(
        [*cmd, "train", *TINY_FLAGS, "--epochs", "2", "--output-dir", str(out)],
        capture_output=True, text=True, env=_env(), timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


# ------------------------------------------------------------------------------------------------
# end-to-end runs
# ------------------------------------------------------------------------------------------------


@needs_data
def test_cli_trilevel_run_writes_all_outputs(trilevel_run):
    out, proc = trilevel_run
    for name in ("config.yaml", "metrics.jsonl", "checkpoint.pt", "summary.json", "train.log"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_FIELDS <= summary.keys()
    assert summary["dense"] is False and summary["world_size"] == 1 and summary["epochs"] == 2
    assert (summary["keep_ratio"], summary["attn_keep_ratio"], summary["selector"]) == (0.7, 0.3, "forgetting")
    assert summary["relative_train_flops"] < 1.0
    assert summary["train_images"] == 2 * 205  # 20% of 256 examples removed
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    for line in lines:
        assert METRIC_FIELDS <= json.loads(line).keys()
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["embed_dim"] == 32 and config["patch_size"] == 7 and config["output_dir"] == str(out)
    assert "val top-1" in proc.stderr and "world size 1" in proc.stderr


@needs_data
def test_cli_dense_run(tmp_path):
    out = tmp_path / "dense"
    proc = run_cli(["train", *TINY_FLAGS, "--epochs", "1", "--warmup-epochs", "0", "--dense", "--output-dir", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_FIELDS <= summary.keys()
    assert summary["dense"] is True and summary["selector"] == "none" and summary["keep_ratio"] == 1.0
    assert summary["relative_train_flops"] == pytest.approx(1.0)
    assert summary["train_images"] == 256


@needs_data
def test_cli_eval_reproduces_final_top1(trilevel_run):
    out, _ = trilevel_run
    summary = json.loads((out / "summary.json").read_text())
    proc = run_cli(["eval", "--checkpoint", str(out / "checkpoint.pt"), "--val-subset", "500", "--json"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["top1"] == pytest.approx(summary["val_top1"])
    assert (result["keep_ratio"], result["attn_keep_ratio"]) == (0.7, 0.3)
    text = run_cli(["eval", "--checkpoint", str(out / "checkpoint.pt"), "--val-subset", "100",
                    "--keep-ratio", "1.0", "--attn-keep-ratio", "1.0"])
    assert text.returncode == 0 and "top-1" in text.stdout and "keep_ratio 1" in text.stdout


@needs_data
def test_torchrun_two_cpu_processes_share_selector_state(tmp_path):
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
         "-m", "trilevel", "train", *TINY_FLAGS, "--batch-size", "16", "--epochs", "2", "--output-dir", str(out)],
        capture_output=True, text=True, env=_env(), timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_batch_size"] == 32
    digests = summary["selector_digest_per_rank"]
    assert len(digests) == 2 and digests[0] == digests[1] == summary["selector_digest"]
    # 205 active examples split over 2 ranks (one padding duplicate) per epoch
    assert summary["train_images"] == 2 * 206
    # evaluation is sharded without duplicates: exactly the 500 validation images
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["val_images"] for m in metrics] == [500, 500]
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    assert "world size 2" in (out / "train.log").read_text()


@needs_data
def test_sigterm_saves_checkpoint_and_exits_143(tmp_path):
    out = tmp_path / "sig"
    proc = subprocess.Popen(
        [sys.executable, "-m", "trilevel", "train", *TINY_FLAGS, "--epochs", "4", "--output-dir", str(out)],
        stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env(),
    )
    try:
        seen = []
        for line in proc.stderr:  # the model line is logged right before the training loop
            seen.append(line)
            if "parameters" in line and "GFLOPs" in line:
                break
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = "".join(seen) + rest
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "SIGTERM received" in stderr and "resume with --resume" in stderr
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["progress"]["global_step"] >= 1 and ckpt["config"]["epochs"] == 4


# ------------------------------------------------------------------------------------------------
# options, config files, errors (in process, no training unless stated)
# ------------------------------------------------------------------------------------------------


def parse(argv: list[str]):
    assert argv[0] == "train"
    return parse_train_config(argv[1:])


def exit_status(argv: list[str]) -> int:
    """The exit status of ``trilevel ARGV`` run in process (returned, or raised by the parser)."""
    try:
        return cli.main(argv)
    except SystemExit as e:
        return e.code


def test_config_file_keys_and_flag_precedence(tmp_path):
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(
        "batch-size: 64\nkeep_ratio: 0.5\nlr: 1e-3\nprune-layers: [1, 2]\nexample-update-every: 3\n"
        "token-fate: fuse\nratio_decay_end: 0.5\n"
    )
    cfg = parse(["train", "-c", str(cfg_file), "--keep-ratio", "0.8", "--token-fate", "bypass"])
    assert cfg.batch_size == 64 and cfg.lr == 1e-3 and cfg.prune_layers == [1, 2]
    assert cfg.example_update_every == 3 and cfg.ratio_decay_end == 0.5
    assert cfg.keep_ratio == 0.8 and cfg.token_fate == "bypass"  # flags override the file
    assert cfg.epochs == 30  # untouched default


def test_flag_value_forms():
    cfg = parse(["train", "--ratio-warmup", "1/30", "--prune-layers", "3,6,9", "--example-update-every", "0.25",
                 "--clip-grad", "none", "--img-size", "none", "--eval-keep-ratio", "0.9"])
    assert cfg.ratio_warmup == pytest.approx(1 / 30) and cfg.prune_layers == [3, 6, 9]
    assert cfg.example_update_every == 0.25 and cfg.clip_grad is None and cfg.eval_keep_ratio == 0.9
    assert parse(["train", "--prune-layers", "none"]).prune_layers is None


def test_unknown_config_key_is_an_error_naming_it(tmp_path, capsys):
    cfg_file = tmp_path / "bad.yaml"
    cfg_file.write_text("batch_size: 64\nkeep-ration: 0.5\n")
    with pytest.raises(ValueError, match="keep-ration"):
        load_config_file(cfg_file)
    assert exit_status(["train", "-c", str(cfg_file)]) == 2
    assert "keep-ration" in capsys.readouterr().err


def test_config_file_that_is_not_a_mapping(tmp_path):
    cfg_file = tmp_path / "list.yaml"
    cfg_file.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config_file(cfg_file)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--keep-ratio", "1.5"], "keep-ratio"),
        (["--attn-keep-ratio", "0"], "attn-keep-ratio"),
        (["--epochs", "three"], "--epochs"),
        (["--dataset", "imagenet"], "--dataset"),
        (["--selector", "magic"], "--selector"),
        (["--batch-size", "0"], "batch-size"),
        (["--example-update-every", "2.5"], "example-update-every"),
        (["--prune-layers", "a,b"], "--prune-layers"),
        (["--amp", "fp8"], "--amp"),
        (["--model", "not_a_timm_model"], "not_a_timm_model"),
    ],
)
def test_bad_flag_values_exit_with_usage_error(argv, expected, capsys):
    assert exit_status(["train", *argv]) == 2
    assert expected in capsys.readouterr().err


def test_missing_config_file(tmp_path, capsys):
    assert exit_status(["train", "-c", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err


def test_missing_data_path_gives_clear_error(tmp_path, capsys):
    missing = tmp_path / "no-mnist-here"
    code = exit_status(["train", *TINY_FLAGS, "--dataset", "mnist", "--train-subset", "none", "--data-dir", str(missing),
                     "--output-dir", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "error" in err and str(missing) in err


@needs_data
def test_resume_flag_takes_configuration_from_checkpoint(trilevel_run):
    out, _ = trilevel_run
    cfg = parse(["train", "--resume", str(out / "checkpoint.pt"), "--workers", "1"])
    assert cfg.embed_dim == 32 and cfg.train_subset == 256 and cfg.epochs == 2
    assert cfg.workers == 1 and cfg.resume == str(out / "checkpoint.pt")
    assert cfg.output_dir is None  # the run then writes next to the checkpoint


def test_eval_missing_checkpoint(tmp_path, capsys):
    code = exit_status(["eval", "--checkpoint", str(tmp_path / "missing.pt")])
    assert code == 2
    assert "missing.pt" in capsys.readouterr().err
