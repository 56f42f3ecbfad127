import os
import time

from nanochat.execution import execute_code


def test_happy_path_captures_output():
    """Ordinary code runs, its stdout is captured and success is reported."""
    r = execute_code("def add(a, b):\n    return a + b\nassert add(2, 3) == 5\nprint('ok', add(1, 1))")
    assert r.success and r.stdout.strip() == "ok 2" and r.error is None


def test_exception_is_reported_not_raised():
    """A failing assertion is a failed result with the last traceback line as the error."""
    r = execute_code("assert 1 == 2, 'nope'")
    assert not r.success and r.error == "AssertionError: nope"


def test_infinite_loop_is_killed():
    """Code that loops forever is killed at the time limit."""
    t0 = time.time()
    r = execute_code("while True:\n    pass", timeout=1.0)
    assert not r.success and r.timeout
    assert time.time() - t0 < 10


def test_unbounded_allocation_hits_memory_limit():
    """Allocating without bound fails with MemoryError under the address-space limit."""
    r = execute_code("x = []\nwhile True:\n    x.append(bytearray(50 * 1024 * 1024))", max_memory_bytes=256 * 1024**2)
    assert not r.success and r.memory_exceeded


def test_file_deletion_is_refused(tmp_path):
    """os.remove, os.unlink, pathlib unlink and shutil.rmtree cannot delete a file outside the sandbox."""
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    for stmt in [
        f"import os; os.remove({str(victim)!r})",
        f"import os; os.unlink({str(victim)!r})",
        f"import pathlib; pathlib.Path({str(victim)!r}).unlink()",
        f"import shutil; shutil.rmtree({str(tmp_path)!r})",
        f"import os; os.rename({str(victim)!r}, {str(victim) + '.x'!r})",
    ]:
        r = execute_code(stmt)
        assert not r.success and "disabled" in r.error, (stmt, r.error)
    assert victim.read_text() == "precious"


def test_process_creation_is_refused():
    """fork, system, subprocess and kill are disabled."""
    for stmt in [
        "import os; os.fork()",
        "import os; os.system('echo hi')",
        "import subprocess; subprocess.run(['echo', 'hi'])",
        "import os; os.kill(1, 9)",
    ]:
        r = execute_code(stmt)
        assert not r.success and "disabled" in r.error, (stmt, r.error)


def test_environment_is_not_inherited(monkeypatch):
    """A secret in the parent's environment is invisible to the sandboxed code."""
    monkeypatch.setenv("NANOCHAT_SECRET_TOKEN", "hunter2")
    r = execute_code("import os\nprint(sorted(os.environ))\nprint(open('/proc/self/environ','rb').read())")
    assert r.success
    assert "hunter2" not in r.stdout and "NANOCHAT_SECRET_TOKEN" not in r.stdout


def test_workdir_is_temporary_and_removed():
    """Files are written in a temporary working directory that is gone afterwards."""
    r = execute_code("import os\nopen('out.txt', 'w').write('x')\nprint(os.getcwd())")
    assert r.success
    workdir = r.stdout.strip()
    assert "nanochat_sandbox_" in workdir and not os.path.exists(workdir)


def test_stdin_is_closed_and_globals_fresh():
    """input() gets EOF instead of hanging, and each run starts from fresh globals."""
    r = execute_code("input()", timeout=3)
    assert not r.success and "EOFError" in r.error
    execute_code("leak = 1")
    r = execute_code("print('leak' in globals())")
    assert r.stdout.strip() == "False"
