"""AI2 ARC (allenai/ai2_arc): grade-school science questions, ARC-Easy and ARC-Challenge."""

from tasks.common import Task, load_rows, render_mc


class ARC(Task):
    eval_type = "categorical"

    def __init__(self, subset, split, path=None, **kwargs):
        super().__init__(**kwargs)
        assert subset in ("ARC-Easy", "ARC-Challenge"), f"ARC subset must be ARC-Easy or ARC-Challenge, got {subset!r}"
        assert split in ("train", "validation", "test"), f"bad ARC split {split!r}"
        self.rows = load_rows("allenai/ai2_arc", subset, split, "arc", path)

    def num_examples(self):
        return len(self.rows)

    def get_example(self, index):
        row = self.rows[index]
        letters, choices = tuple(row["choices"]["label"]), row["choices"]["text"]
        assert row["answerKey"] in letters, f"ARC row {row.get('id', index)}: answer {row['answerKey']} not a label"
        prompt = render_mc(row["question"], letters, choices)
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": row["answerKey"]}]
        return {"messages": messages, "letters": letters}

    def evaluate(self, conversation, completion):
        return completion.strip() == conversation["messages"][-1]["content"]
