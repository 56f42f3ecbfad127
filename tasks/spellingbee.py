"""
SpellingBee: synthetic "how many <letter> are in <word>?" questions. The answer spells the word out, then
checks the count with the calculator tool (`'word'.count('r')`), then states it after `####`. Small models
cannot see letters inside tokens; this teaches them to spell and to lean on the tool.
Words come from a list drawn from the embedded public-domain corpus (nanochat/data/tasks/words.txt).
"""

import os
import random

from nanochat.common import PACKAGE_DATA_DIR
from tasks.common import Task
from tasks.gsm8k import extract_answer

WORDS_PATH = os.path.join(PACKAGE_DATA_DIR, "tasks", "words.txt")
TEMPLATES = [
    "How many {letter} are in the word {word}?",
    "How many times does the letter '{letter}' appear in \"{word}\"?",
    "Count the letter {letter} in {word}.",
    "In the word {word}, how many {letter}s are there?",
    "how many {letter} in {word}",
    "Can you count how often '{letter}' occurs in the word '{word}'?",
]
SEED_OFFSET = {"train": 0, "test": 10_000_000}  # disjoint random streams for the two splits


def load_words(path=WORDS_PATH):
    with open(path, encoding="utf-8") as f:
        words = [w.strip() for w in f if w.strip()]
    assert words, f"no words in {path}"
    return words


class SpellingBee(Task):
    eval_type = "generative"

    def __init__(self, size=1000, split="train", words_path=WORDS_PATH, **kwargs):
        super().__init__(**kwargs)
        assert split in SEED_OFFSET, f"SpellingBee split must be train or test, got {split!r}"
        self.size, self.seed_offset, self.words = size, SEED_OFFSET[split], load_words(words_path)

    def num_examples(self):
        return self.size

    def get_example(self, index):
        rng = random.Random(self.seed_offset + index)
        word = rng.choice(self.words)
        # mostly letters that occur, sometimes one that does not (answer 0)
        letter = rng.choice(word) if rng.random() < 0.85 else rng.choice("abcdefghijklmnopqrstuvwxyz")
        count = word.count(letter)
        question = rng.choice(TEMPLATES).format(letter=letter, word=word)
        answer = [
            {
                "type": "text",
                "text": f"Spelling \"{word}\" out: {','.join(word)}. Let me count '{letter}' with the calculator: ",
            },
            {"type": "python", "text": f"'{word}'.count('{letter}')"},
            {"type": "python_output", "text": str(count)},
            {"type": "text", "text": f"\n\nThe letter '{letter}' appears {count} times in \"{word}\".\n\n#### {count}"},
        ]
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return {"messages": messages, "answer": str(count)}

    def evaluate(self, conversation, completion):
        return extract_answer(completion) == conversation["answer"]
