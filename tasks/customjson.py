"""
Any JSONL file of conversations: one conversation per line, either a list of {"role", "content"} messages or
{"messages": [...]}. Used e.g. for identity conversations that give the model its name and origin.
"""

from tasks.common import Task, read_jsonl


class CustomJSON(Task):
    def __init__(self, path, **kwargs):
        super().__init__(**kwargs)
        self.conversations = []
        for lineno, row in enumerate(read_jsonl(path), 1):
            messages = row["messages"] if isinstance(row, dict) else row
            roles = [m.get("role") if isinstance(m, dict) else None for m in messages]
            expected = ["user", "assistant"] * (len(messages) // 2 + 1)
            if len(messages) < 2 or roles != expected[: len(messages)]:
                raise ValueError(f"{path}:{lineno}: expected alternating user/assistant messages, got roles {roles}")
            if not all(isinstance(m.get("content"), str) and m["content"] for m in messages):
                raise ValueError(f"{path}:{lineno}: every message needs non-empty string content")
            self.conversations.append({"messages": messages})

    def num_examples(self):
        return len(self.conversations)

    def get_example(self, index):
        return self.conversations[index]
