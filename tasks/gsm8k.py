"""
GSM8K (openai/gsm8k, main): grade-school math word problems. The reference solutions' calculator
annotations `<<48/2=24>>` become python tool calls and tool outputs, so the model learns to use the calculator;
the final answer follows `####`.
"""

import re

from tasks.common import Task, load_rows

ANSWER_RE = re.compile(r"####\s*(-?[\d,]*\.?\d+)")
CALC_RE = re.compile(r"<<([^=<>]*)=([^<>]*)>>")


def extract_answer(text):
    """The number after the last '####', commas removed; None if there is none."""
    matches = ANSWER_RE.findall(text)
    return matches[-1].replace(",", "") if matches else None


def solution_parts(answer):
    """Split a reference solution into text / python / python_output parts."""
    parts, pos = [], 0
    for m in CALC_RE.finditer(answer):
        if m.start() > pos:
            parts.append({"type": "text", "text": answer[pos : m.start()]})
        parts.append({"type": "python", "text": m.group(1)})
        parts.append({"type": "python_output", "text": m.group(2)})
        pos = m.end()
    if pos < len(answer):
        parts.append({"type": "text", "text": answer[pos:]})
    return parts


class GSM8K(Task):
    eval_type = "generative"

    def __init__(self, split, path=None, **kwargs):
        super().__init__(**kwargs)
        assert split in ("train", "test"), f"GSM8K split must be train or test, got {split!r}"
        self.rows = load_rows("openai/gsm8k", "main", split, "gsm8k", path)

    def num_examples(self):
        return len(self.rows)

    def get_example(self, index):
        row = self.rows[index]
        messages = [
            {"role": "user", "content": row["question"]},
            {"role": "assistant", "content": solution_parts(row["answer"])},
        ]
        return {"messages": messages, "answer": extract_answer(row["answer"])}

    def evaluate(self, conversation, completion):
        predicted = extract_answer(completion)
        return predicted is not None and predicted == conversation["answer"]
