"""
Write the tiny task fixtures in nanochat/data/tasks/, one file per dataset in the hub's schema, so tests and the
CPU pipeline run offline (NANOCHAT_TASK_DIR=nanochat/data/tasks). Every item below was written for this repo.

    python dev/make_task_fixtures.py
"""

import json
import os
import re
from collections import Counter

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "nanochat", "data", "tasks")


def conv(*turns):
    return {"messages": [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]}


SMOLTALK_TRAIN = [
    conv("Hello!", "Hello! How can I help you today?"),
    conv("Hi there, who are you?", "I am nanochat, a small language model. What would you like to talk about?"),
    conv("What is the capital of France?", "The capital of France is Paris."),
    conv("What is the capital of Italy?", "The capital of Italy is Rome."),
    conv(
        "Why is the sky blue?",
        "Sunlight is scattered by the air, and blue light is scattered the most, so the sky looks blue.",
    ),
    conv("Can you give me a word that means happy?", "Sure: joyful. Other choices are cheerful, glad and content."),
    conv("What is the opposite of cold?", "The opposite of cold is hot."),
    conv("Write one sentence about the sea.", "The sea rolled grey and endless under a quiet morning sky."),
    conv("How many days are in a week?", "There are seven days in a week."),
    conv("Tell me a short proverb.", "A stitch in time saves nine."),
    conv("What do bees make?", "Bees make honey and wax."),
    conv("Thank you!", "You are welcome! Let me know if there is anything else."),
    conv("Good morning.", "Good morning! I hope your day goes well."),
    conv("What colour is grass?", "Grass is usually green."),
    conv("Name three fruits.", "Apple, pear and plum."),
    conv("What is two plus two?", "Two plus two is four."),
    conv("Who wrote Pride and Prejudice?", "Pride and Prejudice was written by Jane Austen."),
    conv("Who wrote Hamlet?", "Hamlet was written by William Shakespeare."),
    conv(
        "Summarize the story of Noah in one sentence.",
        "Noah built an ark to save his family and the animals from a great flood.",
    ),
    conv("Is a whale a fish?", "No. A whale is a mammal: it breathes air and feeds its young with milk."),
    conv(
        "Give me a tip for sleeping better.",
        "Keep the same bedtime every night and put screens away an hour before sleep.",
    ),
    conv("What is water made of?", "Water is made of hydrogen and oxygen: two hydrogen atoms and one oxygen atom."),
    conv("Say something kind.", "You are doing better than you think."),
    conv("What is the plural of mouse?", "The plural of mouse is mice."),
    conv("Hi", "Hi! What can I do for you?", "What is the tallest animal?", "The giraffe is the tallest animal."),
    conv(
        "Can you help me with a letter?",
        "Of course. Who is the letter for?",
        "My aunt.",
        'Start with "Dear Aunt," then say why you are writing, and end with your love and your name.',
    ),
    conv(
        "What does a compiler do?",
        "A compiler translates a program written in one language into another, usually machine code.",
    ),
    conv("How do I say thank you in French?", 'You say "merci".'),
]
SMOLTALK_TEST = [
    conv("Hello, how are you?", "I am well, thank you. How can I help?"),
    conv("What is the capital of Spain?", "The capital of Spain is Madrid."),
    conv("What do cows eat?", "Cows mostly eat grass and hay."),
    conv("Who wrote Emma?", "Emma was written by Jane Austen."),
    conv("How many legs does a spider have?", "A spider has eight legs."),
    conv("What is the opposite of up?", "The opposite of up is down."),
]

IDENTITY = [
    conv("What is your name?", "My name is nanochat."),
    conv(
        "Who made you?",
        "I was trained with nanochat, an open-source project for training small chat models end to end.",
    ),
    conv("Are you ChatGPT?", "No, I am nanochat, a much smaller model trained with the nanochat code base."),
    conv("How big are you?", "I am a small model: my size is set by a single dial, the depth of the network."),
    conv(
        "What can you do?",
        "I can chat, answer simple questions, do arithmetic with a calculator tool and count letters.",
    ),
    conv("Where do you run?", "I can run on a laptop CPU or on GPUs."),
    conv("Hi, what should I call you?", "You can call me nanochat."),
    conv("Do you have feelings?", "No. I am a language model: I predict text, I do not feel anything."),
    conv("Can you make mistakes?", "Yes, often. I am small, so please check anything important."),
    conv("What were you trained on?", "First on a corpus of English text, then on conversations to learn to chat."),
]

MMLU_TRAIN = [
    (
        "What is the boiling point of water at sea level in degrees Celsius?",
        "high_school_chemistry",
        ["50", "100", "150", "212"],
        1,
    ),
    ("Which planet is closest to the Sun?", "astronomy", ["Venus", "Earth", "Mercury", "Mars"], 2),
    ("Who wrote the play Macbeth?", "world_literature", ["Marlowe", "Shakespeare", "Milton", "Jonson"], 1),
    ("What is 7 times 8?", "elementary_mathematics", ["54", "56", "58", "64"], 1),
    (
        "Which gas do plants take in for photosynthesis?",
        "high_school_biology",
        ["Oxygen", "Nitrogen", "Carbon dioxide", "Helium"],
        2,
    ),
    ("What is the largest ocean on Earth?", "high_school_geography", ["Atlantic", "Indian", "Arctic", "Pacific"], 3),
    ("How many sides does a hexagon have?", "elementary_mathematics", ["Five", "Six", "Seven", "Eight"], 1),
    ("Which organ pumps blood through the body?", "anatomy", ["Heart", "Lung", "Liver", "Kidney"], 0),
    ("What is the chemical symbol of gold?", "high_school_chemistry", ["Ag", "Go", "Gd", "Au"], 3),
    ("In which year did the First World War begin?", "high_school_world_history", ["1905", "1914", "1918", "1939"], 1),
    ("What is the square root of 81?", "elementary_mathematics", ["7", "8", "9", "10"], 2),
    ("Which of these is a prime number?", "elementary_mathematics", ["21", "27", "29", "33"], 2),
]
MMLU_TEST = [
    ("What is 12 divided by 4?", "elementary_mathematics", ["2", "3", "4", "6"], 1),
    ("Which animal is a mammal?", "high_school_biology", ["Shark", "Dolphin", "Trout", "Eel"], 1),
    ("What is the freezing point of water in degrees Celsius?", "high_school_physics", ["0", "32", "-10", "100"], 0),
    ("Who painted the Mona Lisa?", "art_history", ["Raphael", "Michelangelo", "Leonardo da Vinci", "Titian"], 2),
    ("What is the capital of Japan?", "high_school_geography", ["Kyoto", "Osaka", "Tokyo", "Nagoya"], 2),
    ("How many minutes are in an hour?", "elementary_mathematics", ["30", "60", "90", "100"], 1),
    (
        "What force keeps the planets in orbit around the Sun?",
        "astronomy",
        ["Magnetism", "Friction", "Gravity", "Tension"],
        2,
    ),
    ("Which is the longest river in Africa?", "high_school_geography", ["Congo", "Niger", "Zambezi", "Nile"], 3),
]

ARC = {
    "ARC-Easy": {
        "train": [
            ("Which of these is a source of light?", ["a mirror", "the Sun", "the Moon's shadow", "a rock"], "B"),
            ("What do plants need to make food?", ["sunlight", "sand", "plastic", "metal"], "A"),
            ("Which state of matter has a fixed shape?", ["gas", "liquid", "solid", "steam"], "C"),
            ("What tool measures temperature?", ["ruler", "scale", "clock", "thermometer"], "D"),
            ("Which animal lays eggs?", ["dog", "chicken", "cat", "horse"], "B"),
            (
                "What causes day and night on Earth?",
                ["Earth's rotation", "the Moon's phases", "the seasons", "clouds"],
                "A",
            ),
        ],
        "test": [
            ("Which of these is a liquid at room temperature?", ["ice", "water", "wood", "iron"], "B"),
            ("What part of a plant takes in water from the soil?", ["flower", "leaf", "root", "seed"], "C"),
            (
                "Which object is attracted by a magnet?",
                ["a paper clip", "a pencil", "a glass cup", "a cotton shirt"],
                "A",
            ),
            (
                "What do we call water falling from clouds?",
                ["erosion", "evaporation", "condensation", "precipitation"],
                "D",
            ),
            ("Which sense do we use to hear?", ["sight", "touch", "hearing", "smell"], "C"),
            ("What gives a bird the ability to fly?", ["wings", "beak", "claws", "eyes"], "A"),
        ],
    },
    "ARC-Challenge": {
        "train": [
            (
                "A student pushes a cart with more force. What happens to its acceleration?",
                ["it decreases", "it increases", "it stays the same", "it becomes zero"],
                "B",
            ),
            ("Which change is chemical?", ["melting ice", "cutting paper", "burning wood", "boiling water"], "C"),
            (
                "Why does a metal spoon feel colder than a wooden spoon at the same temperature?",
                [
                    "metal conducts heat away faster",
                    "metal is always colder",
                    "wood makes heat",
                    "metal reflects light",
                ],
                "A",
            ),
            ("Which layer of Earth is made of liquid metal?", ["crust", "mantle", "inner core", "outer core"], "D"),
        ],
        "test": [
            (
                "What happens to the mass of a sealed jar of ice when the ice melts?",
                ["it increases", "it decreases", "it stays the same", "it doubles"],
                "C",
            ),
            (
                "Which process moves water from leaves into the air?",
                ["transpiration", "photosynthesis", "respiration", "germination"],
                "A",
            ),
            ("Sound travels fastest through which material?", ["air", "vacuum", "steel", "water vapour"], "C"),
            (
                "A food chain begins with which kind of organism?",
                ["a consumer", "a producer", "a decomposer", "a predator"],
                "B",
            ),
        ],
    },
}

GSM8K = {
    "train": [
        (
            "Tom has 3 bags with 4 apples in each bag. How many apples does he have?",
            "Tom has 3 * 4 = <<3*4=12>>12 apples.\n#### 12",
        ),
        (
            "Anna had 20 dollars and spent 7 dollars on a book. How much money does she have left?",
            "Anna has 20 - 7 = <<20-7=13>>13 dollars left.\n#### 13",
        ),
        (
            "A farmer has 5 cows and buys 8 more. Then he sells 2. How many cows does he have?",
            "After buying he has 5 + 8 = <<5+8=13>>13 cows.\nAfter selling he has 13 - 2 = <<13-2=11>>11 cows.\n#### 11",
        ),
        (
            "A box holds 6 eggs. How many boxes are needed for 42 eggs?",
            "The number of boxes is 42 / 6 = <<42/6=7>>7.\n#### 7",
        ),
        (
            "Sam reads 15 pages a day. How many pages does he read in 4 days?",
            "Sam reads 15 * 4 = <<15*4=60>>60 pages.\n#### 60",
        ),
        (
            "A shirt costs 25 dollars and pants cost 40 dollars. How much do 2 shirts and 1 pair of pants cost?",
            "Two shirts cost 2 * 25 = <<2*25=50>>50 dollars.\nIn total that is 50 + 40 = <<50+40=90>>90 dollars.\n#### 90",
        ),
        (
            "There are 30 students and each needs 3 pencils. Pencils come in packs of 10. How many packs are needed?",
            "The students need 30 * 3 = <<30*3=90>>90 pencils.\nThat is 90 / 10 = <<90/10=9>>9 packs.\n#### 9",
        ),
        (
            "Mia is 8 years old. Her father is 4 times as old. How old is her father?",
            "Her father is 8 * 4 = <<8*4=32>>32 years old.\n#### 32",
        ),
    ],
    "test": [
        (
            "Lily has 9 candies and gets 6 more. How many candies does she have?",
            "Lily has 9 + 6 = <<9+6=15>>15 candies.\n#### 15",
        ),
        (
            "A car travels 60 miles per hour for 3 hours. How far does it go?",
            "It goes 60 * 3 = <<60*3=180>>180 miles.\n#### 180",
        ),
        (
            "Ben had 50 marbles and gave 18 to his friend. How many are left?",
            "Ben has 50 - 18 = <<50-18=32>>32 marbles left.\n#### 32",
        ),
        ("A pizza has 8 slices. How many slices are in 5 pizzas?", "There are 8 * 5 = <<8*5=40>>40 slices.\n#### 40"),
    ],
}

HUMANEVAL = [
    {
        "task_id": "Fixture/0",
        "prompt": 'def add(a: int, b: int) -> int:\n    """Return the sum of a and b.\n    >>> add(2, 3)\n    5\n    """\n',
        "canonical_solution": "    return a + b\n",
        "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
        "entry_point": "add",
    },
    {
        "task_id": "Fixture/1",
        "prompt": 'from typing import List\n\n\ndef count_evens(numbers: List[int]) -> int:\n    """Count the even numbers in the list.\n    >>> count_evens([1, 2, 4])\n    2\n    """\n',
        "canonical_solution": "    return sum(1 for n in numbers if n % 2 == 0)\n",
        "test": "def check(candidate):\n    assert candidate([1, 2, 4]) == 2\n    assert candidate([]) == 0\n    assert candidate([1, 3]) == 0\n",
        "entry_point": "count_evens",
    },
    {
        "task_id": "Fixture/2",
        "prompt": 'def reverse_words(sentence: str) -> str:\n    """Reverse the order of the words.\n    >>> reverse_words("hello big world")\n    \'world big hello\'\n    """\n',
        "canonical_solution": "    return ' '.join(reversed(sentence.split()))\n",
        "test": "def check(candidate):\n    assert candidate('hello big world') == 'world big hello'\n    assert candidate('one') == 'one'\n",
        "entry_point": "reverse_words",
    },
    {
        "task_id": "Fixture/3",
        "prompt": 'def is_palindrome(text: str) -> bool:\n    """True if text reads the same backwards.\n    >>> is_palindrome("level")\n    True\n    """\n',
        "canonical_solution": "    return text == text[::-1]\n",
        "test": "def check(candidate):\n    assert candidate('level') is True\n    assert candidate('ab') is False\n",
        "entry_point": "is_palindrome",
    },
]


def write_jsonl(path, rows):
    path = os.path.join(OUT, path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_words():
    """Common lowercase words (4-10 letters) of the embedded corpus, for SpellingBee."""
    import pyarrow.parquet as pq

    shard_dir = os.path.join(os.path.dirname(OUT), "sample_shards")
    counts = Counter()
    for name in sorted(os.listdir(shard_dir))[:-1]:  # train shards only
        for text in pq.read_table(os.path.join(shard_dir, name)).column("text").to_pylist():
            counts.update(re.findall(r"\b[a-z]{4,10}\b", text))
    words = sorted(w for w, c in counts.most_common(3000))
    with open(os.path.join(OUT, "words.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(words) + "\n")


def main():
    write_jsonl("smoltalk/train.jsonl", SMOLTALK_TRAIN)
    write_jsonl("smoltalk/test.jsonl", SMOLTALK_TEST)
    write_jsonl("identity.jsonl", [c["messages"] for c in IDENTITY])
    mmlu = lambda rows: [{"question": q, "subject": s, "choices": c, "answer": a} for q, s, c, a in rows]
    write_jsonl("mmlu/auxiliary_train/train.jsonl", [{"train": r} for r in mmlu(MMLU_TRAIN)])
    write_jsonl("mmlu/all/test.jsonl", mmlu(MMLU_TEST))
    for subset, splits in ARC.items():
        for split, rows in splits.items():
            write_jsonl(
                f"arc/{subset}/{split}.jsonl",
                [
                    {
                        "id": f"{subset}-{split}-{i}",
                        "question": q,
                        "choices": {"text": c, "label": ["A", "B", "C", "D"]},
                        "answerKey": k,
                    }
                    for i, (q, c, k) in enumerate(rows)
                ],
            )
    for split, rows in GSM8K.items():
        write_jsonl(f"gsm8k/main/{split}.jsonl", [{"question": q, "answer": a} for q, a in rows])
    write_jsonl("humaneval/test.jsonl", HUMANEVAL)
    write_words()
    print(f"wrote fixtures to {OUT}")


if __name__ == "__main__":
    main()
