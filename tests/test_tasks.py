import os

import pytest

from nanochat.common import PACKAGE_DATA_DIR
from tasks.arc import ARC
from tasks.common import Task, TaskMixture, TaskSequence, load_rows, render_mc
from tasks.customjson import CustomJSON
from tasks.gsm8k import GSM8K, extract_answer, solution_parts
from tasks.humaneval import HumanEval, extract_code
from tasks.mmlu import MMLU
from tasks.smoltalk import SmolTalk
from tasks.spellingbee import SpellingBee

FIXTURES = os.path.join(PACKAGE_DATA_DIR, "tasks")


@pytest.fixture(autouse=True)
def fixture_task_dir(monkeypatch):
    monkeypatch.setenv("NANOCHAT_TASK_DIR", FIXTURES)


class Range(Task):
    def __init__(self, n, **kwargs):
        super().__init__(**kwargs)
        self.n = n

    def num_examples(self):
        return self.n

    def get_example(self, index):
        return index


def test_task_slicing():
    """start/stop/step slicing maps logical to physical indices and bounds-checks."""
    t = Range(10, start=2, stop=9, step=3)
    assert [t[i] for i in range(len(t))] == [2, 5, 8]
    with pytest.raises(IndexError):
        t[3]


def test_mixture_is_deterministic_and_complete():
    """A seeded mixture has every example once (twice when listed twice), in the same order for the same seed."""
    a, b = Range(5), Range(3)
    m1, m2, m3 = TaskMixture([a, b], seed=1), TaskMixture([a, b], seed=1), TaskMixture([a, b], seed=2)
    order1 = [m1[i] for i in range(len(m1))]
    assert order1 == [m2[i] for i in range(len(m2))]
    assert order1 != [m3[i] for i in range(len(m3))]
    assert sorted(order1) == sorted(list(range(5)) + list(range(3)))
    assert len(TaskMixture([a, a, b])) == 13
    assert [TaskSequence([a, b])[i] for i in range(8)] == [0, 1, 2, 3, 4, 0, 1, 2]


def test_render_mc_letters_after_choices():
    """Multiple-choice prompts put each letter after its choice and ask for the letter only."""
    assert render_mc("2+2?", "AB", ["4", "5"]) == (
        "Multiple Choice question: 2+2?\n- 4=A\n- 5=B\nRespond only with the letter of the correct answer."
    )


def test_mmlu_and_arc_evaluate_letters():
    """MMLU and ARC answers are the gold letter; evaluation accepts exactly that letter."""
    mmlu = MMLU("all", "test")
    ex = mmlu[0]
    assert ex["letters"] == ("A", "B", "C", "D") and ex["messages"][-1]["content"] == "B"  # 12/4 = 3 is choice B
    assert mmlu.evaluate(ex, "B") and mmlu.evaluate(ex, " B\n") and not mmlu.evaluate(ex, "C")
    aux = MMLU("auxiliary_train", "train")
    assert aux[0]["messages"][-1]["content"] == "B"  # nested "train" rows are unwrapped
    arc = ARC("ARC-Easy", "test")
    assert arc[0]["messages"][-1]["content"] == "B" and arc.evaluate(arc[0], "B") and not arc.evaluate(arc[0], "A")


def test_gsm8k_tool_parts_and_answers():
    """Calculator annotations become python/python_output parts; answers are read after ####."""
    parts = solution_parts("He has 3 * 4 = <<3*4=12>>12 apples.\n#### 12")
    assert parts == [
        {"type": "text", "text": "He has 3 * 4 = "},
        {"type": "python", "text": "3*4"},
        {"type": "python_output", "text": "12"},
        {"type": "text", "text": "12 apples.\n#### 12"},
    ]
    assert extract_answer("so #### 1,234") == "1234" and extract_answer("no answer") is None
    task = GSM8K("test")
    ex = task[0]
    assert ex["answer"] == "15"
    assert task.evaluate(ex, "9 + 6 = 15\n#### 15") and not task.evaluate(ex, "#### 16") and not task.evaluate(ex, "15")


def test_humaneval_runs_tests_in_sandbox():
    """A correct completion passes, a wrong one fails, and code is taken from a fenced block."""
    task = HumanEval()
    ex = task[0]
    assert task.evaluate(ex, "```python\ndef add(a, b):\n    return a + b\n```")
    assert not task.evaluate(ex, "def add(a, b):\n    return a - b\n")
    assert extract_code("text\n```py\nx = 1\n```\nmore") == "x = 1\n"


def test_spellingbee_counts_and_is_deterministic():
    """SpellingBee items are reproducible, the tool call counts the right letter, and the answer matches."""
    a, b = SpellingBee(size=20, split="train"), SpellingBee(size=20, split="train")
    assert [a[i] for i in range(20)] == [b[i] for i in range(20)]
    ex = a[3]
    parts = ex["messages"][1]["content"]
    word, letter = eval(parts[1]["text"].replace(".count", ",")), None  # "'word','x'" -> tuple
    word, letter = word
    assert parts[2]["text"] == str(word.count(letter)) == ex["answer"]
    assert a.evaluate(ex, f"#### {ex['answer']}") and not a.evaluate(ex, "#### 99")
    assert SpellingBee(size=5, split="test")[0] != a[0]


def test_smoltalk_and_customjson_render(tmp_path):
    """Conversation datasets load from local files; malformed JSONL conversations raise with the line number."""
    assert SmolTalk("train")[0]["messages"][0]["role"] == "user"
    ident = CustomJSON(os.path.join(FIXTURES, "identity.jsonl"))
    assert "nanochat" in ident[0]["messages"][1]["content"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]\n'
        '[{"role": "assistant", "content": "oops"}]\n'
    )
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        CustomJSON(str(bad))


def test_missing_local_file_is_a_clear_error(monkeypatch, tmp_path):
    """With NANOCHAT_TASK_DIR pointing at a folder without the file, loading names the missing path."""
    monkeypatch.setenv("NANOCHAT_TASK_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="gsm8k"):
        load_rows("openai/gsm8k", "main", "train", "gsm8k")


def test_render_masks_per_task(tiny_tokenizer):
    """Rendered tasks train only on assistant tokens: letters for MC, tool calls but not tool outputs for GSM8K."""
    tok = tiny_tokenizer
    ids, mask = tok.render_conversation(MMLU("all", "test")[0])
    trained = tok.decode([i for i, m in zip(ids, mask) if m])
    assert trained == "B<|assistant_end|>"
    ids, mask = tok.render_conversation(GSM8K("test")[0])
    trained = tok.decode([i for i, m in zip(ids, mask) if m])
    assert "<|python_start|>9+6<|python_end|>" in trained and "<|output_start|>" not in trained
    assert trained.endswith("#### 15<|assistant_end|>")
