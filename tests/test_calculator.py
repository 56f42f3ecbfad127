"""
The calculator tool of the engine: what it evaluates, and that hostile input is refused without being run.
"""

import builtins
import os
import tracemalloc

import pytest

from nanochat.engine import CalculatorRefused, evaluate_calculator, parse_calculator_expression, use_calculator

GOOD = [
    ("2+2", 4),
    ("(48/2)+48*3-12", 156.0),
    ("1,234 * 2", 2468),
    ("  7 % 3 ", 1),
    ("-3 // 2", -2),
    ("2**10", 1024),
    ("2**-1", 0.5),
    ("2**1000", 2**1000),
    ("0.1 + 0.2", 0.1 + 0.2),
    ('"strawberry".count("r")', 3),
    ("'banana'.count('an', 2)", 1),
    ('len("hello world")', 11),
    ('"Hello".lower()', "hello"),
    ('"Hello".upper()', "HELLO"),
    ('"  pad ".strip()', "pad"),
    ('"abc"[1]', "b"),
    ('"abc"[-1]', "c"),
    ('"abcdef"[1:4]', "bcd"),
    ('"abc"[::-1]', "cba"),
    ('"ab" * 3', "ababab"),
    ('"ab" + "cd"', "abcd"),
    ("round(2.567, 2)", 2.57),
    ("max(3, 9) - min(4, 1)", 8),
    ("abs(-4)", 4),
]


@pytest.mark.parametrize("expr,expected", GOOD)
def test_calculator_evaluates_arithmetic_and_string_ops(expr, expected):
    """Arithmetic, thousands separators and the whitelisted string operations give Python's own results."""
    assert use_calculator(expr) == expected


def hostile_expressions(marker):
    """Expressions that are refused; every one that could touch the file system targets `marker`."""
    m = repr(marker)
    return [
        f"__import__('os').system('touch ' + {m})",
        "().__class__.__bases__[0].__subclasses__()",
        f"open({m}, 'w').write('x')",
        "9**9**9",
        "'a'*10**10",
        "[1]*10**9",
        "10**10**10",
        "2**100000",
        "2**1025",
        f"(lambda: open({m}, 'w'))()",
        "lambda x: x",
        f"[open({m}, 'w') for _ in 'a']",
        f"(open({m}, 'w') for _ in 'a')",
        f"exec(\"open({m}, 'w')\")",
        f"eval(\"open({m}, 'w')\")",
        "globals()",
        "vars()",
        "breakpoint()",
        "input()",
        f"f\"{{open({m}, 'w')}}\"",
        f"(x := open({m}, 'w'))",
        "__builtins__",
        "x",
        "'abc'.__class__",
        "'abc'.count.__self__",
        "(1).__add__(2)",
        f"getattr(__import__('os'), 'system')('touch ' + {m})",
        "compile('1', 's', 'eval')",
        "'%0999999999d' % 1",
        "'{:>999999999}'.format(1)",
        "'x'.replace('x', 'y' * 999)",
        "'a' * 1000 + 'b' * 1000",
        "'a'.count('a') ** 9999",
        "max(*[1, 2])",
        "round(1.5, 10**9)",
        "type(1)",
        "__import__",
        "import os",
        "1 if 1 else 2",
        "{1: 2}",
        "(1, 2)",
        "'a' < 'b'",
        "-" * 40 + "1",
        "1+" * 200 + "1",
        "1/0",
        "(-8) ** 0.5",
        "1e308 * 10",
    ]


def test_hostile_expressions_are_refused_and_never_run(tmp_path, monkeypatch):
    """~45 hostile expressions give None; a marker file they would create never appears and eval/exec are never
    called (they are replaced by tripwires for the duration)."""
    marker = str(tmp_path / "pwned")
    calls = []
    monkeypatch.setattr(builtins, "eval", lambda *a, **k: calls.append(("eval", a)))
    monkeypatch.setattr(builtins, "exec", lambda *a, **k: calls.append(("exec", a)))
    monkeypatch.setattr(os, "system", lambda *a, **k: calls.append(("system", a)))
    for expr in hostile_expressions(marker):
        assert use_calculator(expr) is None, expr
    assert calls == []
    assert not os.path.exists(marker)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os').system('ls')",
        "().__class__.__bases__[0].__subclasses__()",
        "open('/etc/passwd').read()",
        "exec('1')",
        "globals()",
        "lambda: 1",
        "[c for c in 'abc']",
        "f'{1}'",
        "(y := 1)",
        "'a'.__len__()",
    ],
)
def test_code_is_refused_at_validation_before_any_evaluation(expr):
    """Names, dunders, calls outside the whitelist, lambdas, comprehensions, f-strings and walrus are rejected by the
    static check of the whole tree, i.e. before a single node is evaluated."""
    with pytest.raises(CalculatorRefused):
        parse_calculator_expression(expr)


@pytest.mark.parametrize("expr", ["9**9**9", "'a'*10**10", "10**10**10", "2**100000", "'ab' * 10**6"])
def test_resource_bombs_are_refused_before_allocating(expr):
    """Huge powers and repetitions are refused from their operands' sizes: the evaluation allocates < 256 KB."""
    tracemalloc.start()
    try:
        with pytest.raises(CalculatorRefused):
            evaluate_calculator(expr)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024, f"{expr}: peak {peak} bytes"


def test_time_limit_is_enforced():
    """The deadline is checked during evaluation: an expression that evaluates with 1 s is refused with 0 s."""
    expr = "(1 + 2) * 3 - 4 / 5 + len('abc')"
    assert use_calculator(expr, timeout_s=1.0) == pytest.approx(11.2)
    assert use_calculator(expr, timeout_s=0.0) is None
    with pytest.raises(CalculatorRefused, match="time limit"):
        evaluate_calculator(expr, timeout_s=0.0)


def test_size_limits():
    """Length, node count and nesting depth are capped; a result string at the cap is fine, one past it is not."""
    assert use_calculator("'a' * 1000") == "a" * 1000
    assert use_calculator("'a' * 1001") is None
    assert use_calculator("1" + "+1" * 31) == 32
    assert use_calculator("1" + "+1" * 100) is None  # too many nodes
    assert use_calculator(" " * 300 + "1") is None  # too long
    assert use_calculator("-" * 10 + "1") == 1
