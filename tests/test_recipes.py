"""The shell recipes: speedrun.sh refuses to start without a GPU, with a message that says what to run instead."""

import os
import subprocess

from nanochat.common import REPO_DIR


def test_speedrun_refuses_without_gpu(tmp_path):
    """With an nvidia-smi that finds no GPU, speedrun.sh exits 1 before setting anything up and points to runcpu.sh."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    (fake / "nvidia-smi").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "NANOCHAT_BASE_DIR": str(tmp_path / "base")}
    proc = subprocess.run(
        ["bash", "speedrun.sh"], check=False, cwd=REPO_DIR, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    assert "speedrun.sh needs NVIDIA GPUs" in proc.stderr and "bash runcpu.sh" in proc.stderr
    assert "[setup]" not in proc.stdout and not (tmp_path / "base").exists()
