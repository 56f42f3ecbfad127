"""MMLU (cais/mmlu): 4-choice questions on 57 subjects; auxiliary_train for training, test for evaluation."""

from tasks.common import Task, load_rows, render_mc

LETTERS = ("A", "B", "C", "D")


class MMLU(Task):
    eval_type = "categorical"

    def __init__(self, subset, split, path=None, **kwargs):
        super().__init__(**kwargs)
        assert subset in ("all", "auxiliary_train"), f"MMLU subset must be all or auxiliary_train, got {subset!r}"
        self.rows = load_rows("cais/mmlu", subset, split, "mmlu", path)

    def num_examples(self):
        return len(self.rows)

    def get_example(self, index):
        row = self.rows[index]
        row = row.get("train", row)  # the hub's auxiliary_train rows nest their fields under "train"
        assert len(row["choices"]) == 4, f"MMLU row {index} has {len(row['choices'])} choices"
        prompt = render_mc(row["question"], LETTERS, row["choices"])
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": LETTERS[row["answer"]]}]
        return {"messages": messages, "letters": LETTERS, "subject": row.get("subject", "")}

    def evaluate(self, conversation, completion):
        return completion.strip() == conversation["messages"][-1]["content"]
