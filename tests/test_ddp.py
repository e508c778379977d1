"""DDP: two gloo processes on the CPU train the tiny detector and end with identical weights."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from pedcrowd.data.synth import ensure_synth
from pedcrowd.engine.checkpoint import load_checkpoint
from pedcrowd.engine.config import Config, apply_overrides, save_config
from pedcrowd.reference.tiny import TINY_SYNTH, tiny_overrides

WORKER = textwrap.dedent("""
    import json, os, sys
    import torch
    from pedcrowd.engine.config import load_config
    from pedcrowd.engine.train import fit

    cfg_path, run_dir, out_dir = sys.argv[1:4]
    torch.set_num_threads(1)
    model, summary = fit(load_config(cfg_path), run_dir)
    rank = int(os.environ["RANK"])
    torch.save(model.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    keep = ("iterations", "rank", "world_size", "weights_digest", "history")
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({k: summary[k] for k in keep}, f)
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# the architectures and assigners (model.arch fcos: pedcrowd.model.fcos; dw: pedcrowd.losses.dw)
ARCHS = {
    "faster_rcnn": [],
    "fcos": ["model.arch=fcos", "model.fcos_num_convs=1", "optim.lr=0.002"],
    "fcos_dw": ["model.arch=fcos", "model.fcos_num_convs=1", "optim.lr=0.002", "model.assigner=dw"],
}


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(ARCHS))
def test_two_gloo_processes_end_with_identical_weights(tmp_path, arch):
    root = tmp_path / "synth"
    ensure_synth(root, TINY_SYNTH)
    # 4 images, 1 per process and step: 2 iterations per process
    cfg = apply_overrides(Config(), [*tiny_overrides(root), "train.batch_size=1", *ARCHS[arch]])
    save_config(cfg, tmp_path / "cfg.yaml")
    (tmp_path / "worker.py").write_text(WORKER)
    port = free_port()
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "WORLD_SIZE": "2",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "OMP_NUM_THREADS": "1",
        }
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(tmp_path / "worker.py"),
                    str(tmp_path / "cfg.yaml"),
                    str(tmp_path / "run"),
                    str(tmp_path),
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        outputs.append(out)
    for rank, p in enumerate(procs):
        assert p.returncode == 0, f"rank {rank} failed:\n{outputs[rank][-3000:]}"

    s0, s1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert (s0["world_size"], s1["world_size"]) == (2, 2)
    assert (s0["rank"], s1["rank"]) == (0, 1)
    assert s0["iterations"] == s1["iterations"] == 2
    # both ranks log the same (all-reduced) epoch losses
    assert s0["history"][0]["train"] == pytest.approx(s1["history"][0]["train"])

    w0, w1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    assert s0["weights_digest"] == s1["weights_digest"]

    # rank 0 alone wrote the run directory, with these very weights, and evaluated
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    for k in w0:
        assert torch.equal(ckpt["model"][k], w0[k])
    assert "mr" in s0["history"][0] and "mr" not in s1["history"][0]
    assert (tmp_path / "run" / "val_eval.json").is_file()
