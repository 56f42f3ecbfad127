"""General conversations: HuggingFaceTB/smol-smoltalk (train 460K, test 24K), rows {"messages": [...]}."""

from tasks.common import Task, load_rows


class SmolTalk(Task):
    def __init__(self, split, path=None, **kwargs):
        super().__init__(**kwargs)
        assert split in ("train", "test"), f"SmolTalk split must be train or test, got {split!r}"
        self.rows = load_rows("HuggingFaceTB/smol-smoltalk", None, split, "smoltalk", path)

    def num_examples(self):
        return len(self.rows)

    def get_example(self, index):
        messages = self.rows[index]["messages"]
        return {"messages": [{"role": m["role"], "content": m["content"]} for m in messages]}
