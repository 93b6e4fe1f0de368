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

from trilevel.checkpoint import load_checkpoint
from trilevel.cli.train import parse_train_config
from trilevel.training.config import load_config_file

from _runs import TINY_RUN_FLAGS, exit_status, needs_fmnist as needs_data

TINY_FLAGS = [
    *TINY_RUN_FLAGS, "--train-subset", "256", "--val-subset", "500", "--warmup-epochs", "0.5", "--log-interval", "2",
    "--preset", "paper",
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


@pytest.mark.slow
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


def torchrun(args: list[str], script: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """``trilevel ARGS`` in 2 CPU processes under torchrun (gloo); ``script``: a test child instead of -m trilevel."""
    target = [str(script)] if script is not None else ["-m", "trilevel"]
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
         *target, *args], capture_output=True, text=True, env={**_env(), **(env or {})}, timeout=400,
    )


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """An uninterrupted 2-epoch run of 2 CPU processes (batch 16 each)."""
    out = tmp_path_factory.mktemp("ddp") / "ddp"
    proc = torchrun(["train", *TINY_FLAGS, "--batch-size", "16", "--epochs", "2", "--output-dir", str(out)])
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


@pytest.mark.slow
@needs_data
def test_torchrun_two_cpu_processes_share_selector_state(ddp_run):
    out = ddp_run
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


@pytest.mark.slow
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


# ------------------------------------------------------------------------------------------------
# faults: SIGKILL at random moments, DDP stop/SIGTERM and resume, a full disk, truncated data
# ------------------------------------------------------------------------------------------------

#: A test child: ``trilevel ARGS`` with the fault ``FAULT=kind:n`` injected at its n-th occasion.
FAULT_CHILD = r'''
import hashlib, os, signal, sys
import torch
from trilevel import training
from trilevel.cli import main

kind, _, n = os.environ.get("FAULT", "none:0").partition(":")
n, calls = int(n or 0), [0]


def due():
    calls[0] += 1
    return calls[0] == n


def note_latest():  # what checkpoint.pt holds when its successor's write dies
    latest = os.path.join(os.environ["FAULT_RUN"], "checkpoint.pt")
    digest = hashlib.sha256(open(latest, "rb").read()).hexdigest() if os.path.exists(latest) else "none"
    with open(os.environ["FAULT_NOTE"], "w") as f:
        f.write(digest)


if kind == "write":  # SIGKILL in the middle of writing a checkpoint (its temporary file half written)
    real_save = torch.save
    def save(obj, f, *args, **kwargs):
        if due():
            note_latest()
            f.write(b"PK\x03\x04 a partial checkpoint")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *args, **kwargs)
    torch.save = save
elif kind == "replace":  # SIGKILL right after a rename (a step file in place, checkpoint.pt not yet)
    real_replace = os.replace
    def replace(src, dst):
        real_replace(src, dst)
        if due():
            os.kill(os.getpid(), signal.SIGKILL)
    os.replace = replace
elif kind == "metrics":  # SIGKILL between an epoch's checkpoint and its metrics.jsonl line
    from trilevel.training import output
    real_append = output.RunOutput.append_metrics
    def append_metrics(self, metrics):
        if due():
            os.kill(os.getpid(), signal.SIGKILL)
        return real_append(self, metrics)
    output.RunOutput.append_metrics = append_metrics
elif kind == "step":  # SIGKILL in the middle of a step: after its backward pass, before its update
    real_step = torch.amp.GradScaler.step
    def step(self, *args, **kwargs):
        if due():
            os.kill(os.getpid(), signal.SIGKILL)
        return real_step(self, *args, **kwargs)
    torch.amp.GradScaler.step = step
elif kind == "sigterm" and os.environ.get("RANK", "0") == "1":  # SIGTERM to rank 1 only, in its n-th step
    real_flops = training.State.flops_per_image
    def flops(self, *args, **kwargs):
        if due():
            os.kill(os.getpid(), signal.SIGTERM)
        return real_flops(self, *args, **kwargs)
    training.State.flops_per_image = flops
sys.exit(main(sys.argv[1:]))
'''

_TIMINGS = {"epoch_seconds", "epoch_cpu_seconds", "train_images_per_s"}


def _metrics(out: Path) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in _TIMINGS} for line in lines]


def assert_same_run(out: Path, ref: Path) -> None:
    """Bit-identical runs: weights, optimizer state, selector digest (every rank), metrics minus timings."""
    import torch

    a, b = (json.loads((d / "summary.json").read_text()) for d in (out, ref))
    for key in ("finished", "val_top1", "val_loss", "train_loss", "train_acc", "train_images", "global_steps",
                "relative_train_flops", "selector_digest", "selector_digest_per_rank", "world_size"):
        assert a[key] == b[key], key
    assert _metrics(out) == _metrics(ref)
    mine, theirs = load_checkpoint(out / "checkpoint.pt"), load_checkpoint(ref / "checkpoint.pt")
    for k, v in theirs["model"].items():
        assert torch.equal(mine["model"][k], v), k
    for s, t in zip(mine["optimizer"]["state"].values(), theirs["optimizer"]["state"].values()):
        assert all(torch.equal(s[k], t[k]) for k in t)
    assert mine["selector_digest"] == theirs["selector_digest"] and mine["progress"]["global_step"] == \
        theirs["progress"]["global_step"]


@pytest.mark.slow
@needs_data
def test_sigkill_at_random_moments_and_resume_ends_bit_identical(tmp_path):
    import hashlib
    import random
    import time

    flags = ["train", *TINY_FLAGS, "--epochs", "3"]  # 3 epochs of 7 steps
    straight = tmp_path / "straight"
    proc = run_cli([*flags, "--output-dir", str(straight)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    child = tmp_path / "child.py"
    child.write_text(FAULT_CHILD)
    out, note = tmp_path / "chaos", tmp_path / "note"
    latest = out / "checkpoint.pt"
    fresh = [*flags, "--checkpoint-every", "1", "--keep-last", "2", "--output-dir", str(out)]
    rng = random.Random(15)  # random moments, the same ones on every run of the test
    plan = ["time", "step", "write", "metrics", "replace", "write", "step"]
    kills, atomic_proofs = [], 0
    for kind in [*plan, "none"]:
        done = load_checkpoint(latest)["progress"]["global_step"] if latest.exists() else 0
        left = 21 - done  # steps (and, with --checkpoint-every 1, checkpoint writes) still to come
        if kind == "time" and left < 10:
            kind = "step"  # too little left to hit with a timer
        if kind != "none" and left == 0:
            continue  # the run is complete: nothing left to interrupt
        # the n-th occasion of this invocation: step, checkpoint write, rename (2 a write, 1 on resume), epoch end
        n = {"time": 0, "none": 0, "metrics": 1, "step": rng.randint(1, min(3, left)),
             "write": rng.randint(min(2, left), min(3, left)), "replace": rng.randint(1, min(4, 2 * left))}[kind]
        args = ["train", "--resume", str(latest)] if latest.exists() else fresh
        proc = subprocess.Popen([sys.executable, str(child), *args], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True,
                                env={**_env(), "FAULT": f"{kind}:{n}", "FAULT_RUN": str(out), "FAULT_NOTE": str(note)})
        try:
            if kind == "time":  # SIGKILL a random moment after the training loop starts
                for line in proc.stderr:
                    if "parameters" in line and "GFLOPs" in line:
                        break
                time.sleep(rng.uniform(0.02, 0.25))
                proc.kill()
            _, err = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
        if kind == "none":
            break
        assert proc.returncode == -signal.SIGKILL, (kind, n, done, err[-3000:])
        kills.append((kind, n, done))
        if latest.exists():
            load_checkpoint(latest)  # whatever the moment, the latest checkpoint loads
        if kind == "write" and note.read_text() != "none":  # the killed write left its predecessor intact
            assert hashlib.sha256(latest.read_bytes()).hexdigest() == note.read_text()
            atomic_proofs += 1
    assert proc.returncode == 0, err[-3000:]
    print("kills (kind, n, global step before):", kills)
    assert len(kills) >= 6 and atomic_proofs >= 1 and any(k[0] == "metrics" for k in kills), kills
    assert_same_run(out, straight)
    assert len(list(out.glob("checkpoint-step*.pt"))) <= 3 and not list(out.glob(".*.tmp"))


@pytest.mark.slow
@needs_data
def test_torchrun_stop_sigterm_and_resume_match_the_straight_run(ddp_run, tmp_path, capsys):
    child = tmp_path / "child.py"
    child.write_text(FAULT_CHILD)
    out = tmp_path / "ddp"
    latest = out / "checkpoint.pt"
    proc = torchrun(["train", *TINY_FLAGS, "--batch-size", "16", "--epochs", "2", "--stop-after-epoch", "1",
                     "--output-dir", str(out)])
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert load_checkpoint(latest)["progress"]["epoch"] == 1
    proc = torchrun(["train", "--resume", str(latest)], script=child, env={"FAULT": "sigterm:3"})
    assert proc.returncode != 0 and "SIGTERM received" in proc.stderr, proc.stderr[-4000:]
    p = load_checkpoint(latest)["progress"]
    # rank 1's signal came after step 3's stop flags were exchanged: both ranks stop after step 4
    assert (p["epoch"], p["step_in_epoch"]) == (1, 4)
    proc = torchrun(["train", "--resume", str(latest)])
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert_same_run(out, ddp_run)
    # one process cannot continue it exactly: a clear error, unless --allow-world-size-change
    assert exit_status(["train", "--resume", str(latest)]) == 2
    err = capsys.readouterr().err
    assert "saved by 2 process(es) but this run has 1" in err and "--allow-world-size-change" in err


@needs_data
def test_a_full_disk_stops_the_run_with_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    import errno

    import torch

    real, calls = torch.save, {"n": 0}

    def disk_full(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full)
    out = tmp_path / "full"
    code = exit_status(["train", *TINY_FLAGS, "--epochs", "1", "--warmup-epochs", "0", "--checkpoint-every", "3",
                        "--output-dir", str(out)])
    monkeypatch.undo()
    assert code == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("trilevel train: error:")]
    assert len(lines) == 1 and "Traceback" not in err
    assert f"cannot write checkpoint {out / 'checkpoint.pt'} at epoch 1, step 6" in lines[0]
    assert "No space left on device" in lines[0] and "epoch 1, step 3) is kept" in lines[0]
    assert load_checkpoint(out / "checkpoint.pt")["progress"]["global_step"] == 3


@needs_data
def test_an_error_while_training_exits_1_not_2(tmp_path, monkeypatch, capsys):
    from trilevel import training

    def broken(self, *args, **kwargs):
        raise RuntimeError("the device fell over")

    monkeypatch.setattr(training.State, "flops_per_image", broken)
    code = exit_status(["train", *TINY_FLAGS, "--epochs", "1", "--output-dir", str(tmp_path / "boom")])
    assert code == 1
    err = capsys.readouterr().err
    assert "training failed at epoch 1" in err and "the device fell over" in err and "Traceback" not in err


def _idx_files(folder: Path, n: int = 8) -> Path:
    import struct

    folder.mkdir(parents=True)
    for split in ("train", "t10k"):
        (folder / f"{split}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, n, 28, 28) + bytes(n * 784))
        (folder / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, n) + bytes(range(n)))
    return folder


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_idx_file_is_a_usage_error_naming_it(tmp_path, capsys, gz):
    import gzip

    folder = _idx_files(tmp_path / "idx")
    images = folder / "train-images-idx3-ubyte"
    data = images.read_bytes()
    if gz:
        images.unlink()
        images = folder / "train-images-idx3-ubyte.gz"
        data = gzip.compress(data)
    images.write_bytes(data[: len(data) // 2])  # cut short
    code = exit_status(["train", "--dataset", "mnist", "--data-dir", str(folder), "--device", "cpu",
                        "--output-dir", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and f"{str(images)!r} is truncated" in lines[0] and "Traceback" not in err


@pytest.mark.parametrize("workers", [0, 1])
def test_truncated_image_file_is_a_usage_error_naming_it(tmp_path, capsys, workers):
    from PIL import Image

    for split in ("train", "val"):
        for label in ("a", "b"):
            d = tmp_path / "images" / split / label
            d.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (16, 16), (40 * i, 100, 200)).save(d / f"{i}.png")
    broken = tmp_path / "images" / "train" / "b" / "1.png"
    broken.write_bytes(broken.read_bytes()[:60])
    code = exit_status(["train", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "images"), "--img-size", "16",
                        "--patch-size", "4", "--embed-dim", "32", "--depth", "2", "--num-heads", "2",
                        "--batch-size", "6", "--epochs", "1", "--workers", str(workers), "--device", "cpu",
                        "--output-dir", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and str(broken) in lines[0] and "Traceback" not in err
