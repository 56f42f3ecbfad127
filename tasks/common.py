"""
The small shared base of every task: a dataset of conversations with slicing, an evaluation type and an
`evaluate` hook; a seeded mixture and a sequence of tasks; the multiple-choice rendering; and the one loader
that reads a dataset from the HuggingFace hub or, offline, from a local file in the same schema.
"""

import gzip
import json
import os
import random

TASK_DIR_ENV = "NANOCHAT_TASK_DIR"  # folder of <name>/[<subset>/]<split>.jsonl files, e.g. nanochat/data/tasks


class Task:
    eval_type = None  # "categorical" (pick a letter), "generative" (sample and check), None (training only)

    def __init__(self, start=0, stop=None, step=1):
        assert start >= 0 and step >= 1 and (stop is None or stop >= start), f"bad slice {start}:{stop}:{step}"
        self.start, self.stop, self.step = start, stop, step

    def num_examples(self):
        raise NotImplementedError

    def get_example(self, index):
        raise NotImplementedError

    def evaluate(self, conversation, completion):
        raise NotImplementedError(f"{type(self).__name__} is a training-only task")

    def __len__(self):
        stop = self.num_examples() if self.stop is None else min(self.stop, self.num_examples())
        return max(0, -(-(stop - self.start) // self.step))

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {type(self).__name__} of length {len(self)}")
        return self.get_example(self.start + index * self.step)


class TaskMixture(Task):
    """All examples of several tasks in one deterministic shuffled order (list a task twice to oversample it)."""

    def __init__(self, tasks, seed=42, **kwargs):
        super().__init__(**kwargs)
        self.tasks = tasks
        self.index = [(t, i) for t, task in enumerate(tasks) for i in range(len(task))]
        random.Random(seed).shuffle(self.index)

    def num_examples(self):
        return len(self.index)

    def get_example(self, index):
        t, i = self.index[index]
        return self.tasks[t][i]


class TaskSequence(Task):
    """Tasks one after the other, in order (e.g. a curriculum)."""

    def __init__(self, tasks, **kwargs):
        super().__init__(**kwargs)
        self.tasks = tasks

    def num_examples(self):
        return sum(len(t) for t in self.tasks)

    def get_example(self, index):
        for task in self.tasks:
            if index < len(task):
                return task[index]
            index -= len(task)
        raise IndexError(index)


def render_mc(question, letters, choices):
    """
    Multiple-choice prompt with the letter AFTER each choice ("- Paris=A"): small models bind the letter to
    the choice text better this way (nanochat's finding). The answer is the bare letter.
    """
    lines = [f"Multiple Choice question: {question}"]
    lines += [f"- {choice}={letter}" for letter, choice in zip(letters, choices)]
    lines.append("Respond only with the letter of the correct answer.")
    return "\n".join(lines)


def read_jsonl(path):
    """Rows of a .jsonl or .jsonl.gz file; a malformed line raises naming the file and line."""
    opener = gzip.open if path.endswith(".gz") else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: not valid JSON ({e})") from e
    return rows


def load_rows(hub_name, subset, split, local_name, path=None):
    """
    Rows of a dataset: from `path` if given; else from $NANOCHAT_TASK_DIR/<local_name>/[<subset>/]<split>.jsonl
    if that variable is set; else from the hub through `datasets`. Never falls back silently.
    """
    if path is None and os.environ.get(TASK_DIR_ENV):
        parts = [os.environ[TASK_DIR_ENV], local_name] + ([subset] if subset else []) + [split]
        path = os.path.join(*parts) + ".jsonl"
        if not os.path.exists(path) and os.path.exists(path + ".gz"):
            path += ".gz"
    if path is not None:
        if not os.path.exists(path):
            raise FileNotFoundError(f"{local_name}: local file {path} not found (set by {TASK_DIR_ENV} or a path)")
        if path.endswith(".parquet"):
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        return read_jsonl(path)
    try:
        import datasets

        return datasets.load_dataset(hub_name, subset, split=split)
    except Exception as e:
        raise RuntimeError(
            f"could not load {hub_name} (subset {subset}, split {split}) from the HuggingFace hub: {e}\n"
            f"Offline, set {TASK_DIR_ENV} to a folder holding {local_name}/{subset + '/' if subset else ''}"
            f"{split}.jsonl in the hub's schema (the repo ships tiny fixtures: {TASK_DIR_ENV}=nanochat/data/tasks)."
        ) from e
