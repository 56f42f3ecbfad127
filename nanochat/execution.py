"""
Run untrusted, model-written Python (HumanEval completions) in a separate, throw-away process.

What the sandbox does:
- a fresh `python -I` subprocess (isolated: no user site, no PYTHON* variables) in its own session, so a timeout
  kills the whole process group;
- an empty environment (only a minimal PATH): nothing of the parent's variables, tokens or keys leaks in;
- a temporary working directory, removed afterwards;
- resource limits: address space (memory), CPU seconds, file size, no core dumps; a wall-clock timeout on top;
- a guard prelude that disables destructive or escaping functions (process creation, signals, file deletion
  and renaming, permission changes, directory changes) before the user code runs with fresh globals;
- stdout/stderr captured (truncated to a cap), stdin closed.

What it is not: a security boundary against a determined attacker (ctypes, network sockets and reading
world-readable files remain possible). Run evaluations on a machine you do not mind losing.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

# The guard runs inside the child before the user code. It receives the user code on stdin-free argv.
GUARD = r"""
import builtins, os, shutil, subprocess, sys, resource, faulthandler
mem = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_DATA, (mem, mem))
resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024 * 1024, 16 * 1024 * 1024))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
cpu = int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
faulthandler.disable()
code = open(sys.argv[1], encoding="utf-8").read()
os.environ.clear()

def _disabled(name):
    def refuse(*args, **kwargs):
        raise PermissionError(f"{name} is disabled in the sandbox")
    return refuse

for _name in ["system", "popen", "fork", "forkpty", "vfork", "kill", "killpg", "execv", "execve", "execvp",
              "execvpe", "execl", "execle", "execlp", "execlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe",
              "spawnl", "spawnle", "spawnlp", "spawnlpe", "posix_spawn", "posix_spawnp", "remove", "unlink",
              "rmdir", "removedirs", "rename", "renames", "replace", "truncate", "ftruncate", "chmod", "fchmod",
              "lchmod", "chown", "fchown", "lchown", "chroot", "chdir", "fchdir", "putenv", "unsetenv",
              "setuid", "setgid", "seteuid", "setegid", "setsid", "nice", "link", "symlink", "mkfifo", "mknod",
              "register_at_fork", "abort", "_exit"]:
    if hasattr(os, _name):
        setattr(os, _name, _disabled("os." + _name))
for _name in ["rmtree", "move", "chown", "copytree", "copy", "copy2", "copyfile"]:
    setattr(shutil, _name, _disabled("shutil." + _name))
for _name in ["Popen", "call", "check_call", "check_output", "run", "getoutput", "getstatusoutput"]:
    setattr(subprocess, _name, _disabled("subprocess." + _name))
builtins.exit = builtins.quit = builtins.help = None
for _mod in ["ipdb", "joblib", "multiprocessing", "psutil", "resource", "tkinter", "pty", "signal"]:
    sys.modules[_mod] = None
del _name, _mod
exec(compile(code, "<sandbox>", "exec"), {"__name__": "__main__", "__builtins__": builtins})
"""

OUTPUT_CAP = 64 * 1024  # bytes kept of stdout and of stderr


@dataclass
class ExecutionResult:
    success: bool  # exit code 0 and no timeout
    stdout: str
    stderr: str
    error: str | None = None  # last line of the traceback, or why it was stopped
    timeout: bool = False
    memory_exceeded: bool = False
    returncode: int | None = None


def execute_code(code, timeout=5.0, max_memory_bytes=512 * 1024 * 1024):
    """Run `code` in the sandbox; never raises for anything the code does."""
    workdir = tempfile.mkdtemp(prefix="nanochat_sandbox_")
    try:
        code_path = os.path.join(workdir, "program.py")
        with open(code_path, "w", encoding="utf-8") as f:
            f.write(code)
        cpu_seconds = max(1, int(timeout) + 1)
        cmd = [sys.executable, "-I", "-c", GUARD, code_path, str(max_memory_bytes), str(cpu_seconds)]
        proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            timed_out = True
        stdout = out[:OUTPUT_CAP].decode("utf-8", errors="replace")
        stderr = err[:OUTPUT_CAP].decode("utf-8", errors="replace")
        memory_exceeded = "MemoryError" in stderr
        error = None
        if timed_out:
            error = f"timed out after {timeout} s"
        elif proc.returncode == -signal.SIGXCPU:
            error, timed_out = "CPU time limit exceeded", True
        elif proc.returncode != 0:
            lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
            error = lines[-1] if lines else f"exit code {proc.returncode}"
        return ExecutionResult(
            success=proc.returncode == 0 and not timed_out,
            stdout=stdout,
            stderr=stderr,
            error=error,
            timeout=timed_out,
            memory_exceeded=memory_exceeded,
            returncode=proc.returncode,
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
