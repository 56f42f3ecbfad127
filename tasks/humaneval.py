"""HumanEval (openai/openai_humaneval): 164 Python functions to complete, checked by running their tests."""

import re

from nanochat.execution import execute_code
from tasks.common import Task, load_rows

CODE_BLOCK_RE = re.compile(r"```(?:python|py)?\n(.*?)```", re.DOTALL)


def extract_code(completion):
    """The first fenced code block, or the whole completion when there is none."""
    m = CODE_BLOCK_RE.search(completion)
    return m.group(1) if m else completion


def import_lines(prompt):
    return "\n".join(ln for ln in prompt.splitlines() if ln.startswith(("import ", "from ")))


class HumanEval(Task):
    eval_type = "generative"

    def __init__(self, path=None, timeout=5.0, **kwargs):
        super().__init__(**kwargs)
        self.rows = load_rows("openai/openai_humaneval", None, "test", "humaneval", path)
        self.timeout = timeout

    def num_examples(self):
        return len(self.rows)

    def get_example(self, index):
        row = self.rows[index]
        messages = [
            {"role": "user", "content": row["prompt"]},
            {"role": "assistant", "content": row["prompt"] + row["canonical_solution"]},
        ]
        return {"messages": messages, "entry_point": row["entry_point"], "test": row["test"], "prompt": row["prompt"]}

    def evaluate(self, conversation, completion):
        program = "\n\n".join(
            [
                import_lines(conversation["prompt"]),
                extract_code(completion),
                conversation["test"],
                f"check({conversation['entry_point']})",
            ]
        )
        return execute_code(program, timeout=self.timeout).success
