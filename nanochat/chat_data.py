"""
What the post-training stages share (scripts may not import each other): the task mixtures of midtraining and SFT,
the conversation packing loader, the fine-tuning schedules, where a stage's optimizer settings come from, and the
chat evaluations used by chat_eval, by SFT's periodic eval and by RL's pass@k.

ChatLoader: conversations of a Task (usually a TaskMixture) packed into rows of T+1 tokens.
- Sharding: rank r of W walks conversation indices r, r+W, r+2W, ... of the task, then starts over (epoch + 1).
  Its share is len(range(r, N, W)); `progress` = conversations placed into rows / share, so 1.0 = one epoch. The
  buffer takes nothing of the next epoch until the current one is placed, so an epoch is every conversation once.
- Rendering: tokenizer.render_conversation -> (ids, mask); a conversation longer than a row is cut to T+1 tokens
  (the render's max_tokens), then fills a row on its own; `truncated` counts these. Nothing else is ever cut.
- Packing: a buffer of rendered conversations (refilled to `buffer_size` before every placement). Each row is
  filled best-fit: repeatedly the LONGEST buffered conversation that fits whole in the space left (first in buffer
  order among equals); when none fits, the rest of the row is padding (BOS in the inputs, -1 in the targets).
  So every row starts with BOS, conversations are never cropped to fit, and padding sits only at row ends.
- Loss mask: inputs = row[:-1], targets = row[1:], with target -1 wherever the render mask is 0 (BOS, user turns,
  <|assistant_start|>, tool output) and on padding: the loss is on assistant tokens only.
- Resume: state_dict() is small and JSON-serializable (the buffer is stored as stream positions, re-rendered on
  load); a loader restored from the state taken after batch k yields exactly the batches that follow batch k.

Chat evaluation (nanochat.md 7.4): categorical tasks (ARC, MMLU) in batches: render for completion, right-pad with
BOS, one forward, argmax of the logits at the last prompt position restricted to the problem's letters. Generative
tasks (GSM8K, HumanEval, SpellingBee) through the Engine, num_samples per problem, pass@k = any of the first k
samples passes. Ranks stride over problems; counts are summed over ranks. ChatCORE = mean centered accuracy.
"""

import math
import os
import random
import time

import numpy as np
import torch
import torch.distributed as dist

from nanochat.common import PACKAGE_DATA_DIR, get_base_dir, get_dist_info, print0

STATE_VERSION = 1
IDENTITY_FILE = os.path.join(PACKAGE_DATA_DIR, "tasks", "identity.jsonl")

# -----------------------------------------------------------------------------
# Task mixtures (tasks are imported here, not at module import: loading them reads files or the hub)


def mid_train_mixture(identity_file=IDENTITY_FILE, identity_epochs=2, spellingbee_size=80_000):
    """Midtraining (nanochat.md 9.1): conversations, multiple choice, math with the calculator, identity, spelling."""
    from tasks.common import TaskMixture
    from tasks.customjson import CustomJSON
    from tasks.gsm8k import GSM8K
    from tasks.mmlu import MMLU
    from tasks.smoltalk import SmolTalk
    from tasks.spellingbee import SpellingBee

    identity = CustomJSON(identity_file)
    tasks = [SmolTalk("train"), MMLU("auxiliary_train", "train"), GSM8K("train")] + [identity] * identity_epochs
    if spellingbee_size > 0:
        tasks.append(SpellingBee(spellingbee_size, "train"))
    return TaskMixture(tasks)


def sft_train_mixture(
    identity_file=IDENTITY_FILE, identity_epochs=2, mmlu_epochs=3, gsm8k_epochs=4, spellingbee_size=80_000
):
    """SFT (nanochat.md 9.2): SmolTalk, MMLU and GSM8K repeated for several epochs, identity, spelling."""
    from tasks.common import TaskMixture
    from tasks.customjson import CustomJSON
    from tasks.gsm8k import GSM8K
    from tasks.mmlu import MMLU
    from tasks.smoltalk import SmolTalk
    from tasks.spellingbee import SpellingBee

    identity = CustomJSON(identity_file)
    tasks = [SmolTalk("train")] + [MMLU("auxiliary_train", "train")] * mmlu_epochs + [GSM8K("train")] * gsm8k_epochs
    tasks += [identity] * identity_epochs
    if spellingbee_size > 0:
        tasks.append(SpellingBee(spellingbee_size, "train"))
    return TaskMixture(tasks)


def val_mixture():
    """Validation conversations for mid and SFT: SmolTalk test, the first 5,200 MMLU test and 420 GSM8K test."""
    from tasks.common import TaskMixture
    from tasks.gsm8k import GSM8K
    from tasks.mmlu import MMLU
    from tasks.smoltalk import SmolTalk

    return TaskMixture([SmolTalk("test"), MMLU("all", "test", stop=5200), GSM8K("test", stop=420)])


def describe_tasks(task):
    """[{"task", "conversations", "epochs"}] of a TaskMixture (a task listed k times has epochs k), or of one task."""
    entries = {}  # id(task) -> entry: the mixtures repeat the very same task object for extra epochs
    for t in getattr(task, "tasks", [task]):
        if id(t) in entries:
            entries[id(t)]["epochs"] += 1
        else:
            entries[id(t)] = {"task": type(t).__name__, "conversations": len(t), "epochs": 1}
    return list(entries.values())


def describe_task_source():
    """Where the task rows were read from (tasks/common.load_rows): local files or the HuggingFace hub."""
    from tasks.common import TASK_DIR_ENV

    if os.environ.get(TASK_DIR_ENV):
        return f"local files under {os.environ[TASK_DIR_ENV]} (${TASK_DIR_ENV})"
    return "HuggingFace hub (datasets.load_dataset)"


def describe_chat_data(train_task, val_task):
    """The `data` of a midtraining or SFT checkpoint's meta (and of its model card): task source and mixtures."""
    return {
        "task_source": describe_task_source(),
        "train_mixture": describe_tasks(train_task),
        "train_conversations": len(train_task),
        "val_mixture": describe_tasks(val_task),
        "val_conversations": len(val_task),
    }


# -----------------------------------------------------------------------------
# The conversation packing loader


class ChatLoader:
    def __init__(self, task, tokenizer, B, T, device="cpu", rank=None, world_size=None, buffer_size=100):
        assert B >= 1 and T >= 1, f"B and T must be positive, got B={B} T={T}"
        assert buffer_size >= 1, f"buffer_size must be positive, got {buffer_size}"
        _, dist_rank, _, dist_world_size = get_dist_info()
        self.rank = dist_rank if rank is None else rank
        self.world_size = dist_world_size if world_size is None else world_size
        assert 0 <= self.rank < self.world_size, f"rank {self.rank} out of range for world_size {self.world_size}"
        self.task, self.tokenizer = task, tokenizer
        self.B, self.T = B, T
        self.device = torch.device(device)
        self.num_examples = len(task)
        self.share = len(range(self.rank, self.num_examples, self.world_size))  # conversations per epoch
        assert self.share >= 1, (
            f"rank {self.rank} of {self.world_size} gets none of the {self.num_examples} conversations: "
            f"use fewer ranks (or micro-batches per step) or more data"
        )
        self.buffer_size = buffer_size
        self.bos = tokenizer.get_bos_token_id()
        self.cursor = 0  # next position in this rank's stream; conversation index rank + (cursor % share) * W
        self.buffer = []  # [(stream position, ids, mask)], ids and mask int32 arrays, in insertion order
        self.placed = 0  # conversations placed into rows
        self.rows = 0
        self.tokens = 0  # tokens in rows, padding included
        self.pad_tokens = 0
        self.truncated = 0  # conversations longer than a row, cut to T+1 tokens by the render
        self.layout = []  # per row of the last batch: [(conversation index, length)] in row order (for tests/stats)

    # -------------------------------------------------------------------------
    # Stream and buffer

    def index_of(self, position):
        return self.rank + (position % self.share) * self.world_size

    @property
    def epoch(self):
        """1-based epoch being consumed."""
        return self.placed // self.share + 1

    @property
    def progress(self):
        """Fraction of an epoch consumed: conversations placed into rows / this rank's share."""
        return self.placed / self.share

    def _render(self, position):
        conversation = self.task[self.index_of(position)]
        ids, mask = self.tokenizer.render_conversation(conversation, max_tokens=None)
        truncated = len(ids) > self.T + 1
        cap = self.T + 1
        return np.array(ids[:cap], dtype=np.int32), np.array(mask[:cap], dtype=np.int32), truncated

    def _refill(self):
        # The buffer never reaches into the next epoch before this one is fully placed: an epoch is then exactly
        # every conversation of the share once (at the price of a thinner choice, more padding, at its very end).
        epoch_end = (self.placed // self.share + 1) * self.share
        while len(self.buffer) < self.buffer_size and self.cursor < epoch_end:
            ids, mask, truncated = self._render(self.cursor)
            self.truncated += truncated
            self.buffer.append((self.cursor, ids, mask))
            self.cursor += 1

    # -------------------------------------------------------------------------
    # Packing

    def _fill_row(self, row_ids, row_mask):
        """Fill one row of T+1 tokens best-fit; pad the rest. Returns the row's layout."""
        capacity, pos, layout = self.T + 1, 0, []
        while pos < capacity:
            self._refill()
            remaining = capacity - pos
            best = -1
            for i, (_, ids, _) in enumerate(self.buffer):
                if len(ids) <= remaining and (best < 0 or len(ids) > len(self.buffer[best][1])):
                    best = i
            if best < 0:
                break  # nothing fits whole: pad (a conversation is never cropped to fit)
            position, ids, mask = self.buffer.pop(best)
            row_ids[pos : pos + len(ids)] = ids
            row_mask[pos : pos + len(ids)] = mask
            pos += len(ids)
            layout.append((self.index_of(position), len(ids)))
            self.placed += 1
        row_ids[pos:] = self.bos
        row_mask[pos:] = 0
        self.pad_tokens += capacity - pos
        self.tokens += capacity
        self.rows += 1
        return layout

    def __iter__(self):
        return self

    def __next__(self):
        B, T = self.B, self.T
        row_ids = np.empty(T + 1, dtype=np.int64)
        row_mask = np.empty(T + 1, dtype=np.int64)
        inputs = np.empty((B, T), dtype=np.int64)
        targets = np.empty((B, T), dtype=np.int64)
        self.layout = []
        for b in range(B):
            self.layout.append(self._fill_row(row_ids, row_mask))
            inputs[b] = row_ids[:-1]
            targets[b] = np.where(row_mask[1:] == 1, row_ids[1:], -1)  # loss only on assistant tokens
        x, y = torch.from_numpy(inputs), torch.from_numpy(targets)
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)

    # -------------------------------------------------------------------------
    # Resume

    def state_dict(self):
        return {
            "version": STATE_VERSION,
            "rank": self.rank,
            "world_size": self.world_size,
            "num_examples": self.num_examples,
            "T": self.T,
            "cursor": self.cursor,
            "buffer": [position for position, _, _ in self.buffer],
            "buffer_tokens": sum(len(ids) for _, ids, _ in self.buffer),
            "placed": self.placed,
            "rows": self.rows,
            "tokens": self.tokens,
            "pad_tokens": self.pad_tokens,
            "truncated": self.truncated,
        }

    def load_state_dict(self, state):
        assert state["version"] == STATE_VERSION, f"chat loader state version {state['version']} != {STATE_VERSION}"
        mine = (self.rank, self.world_size, self.num_examples, self.T)
        theirs = (state["rank"], state["world_size"], state["num_examples"], state["T"])
        assert mine == theirs, f"chat loader state is for (rank, world_size, num_examples, T)={theirs}, this is {mine}"
        self.buffer = []
        for position in state["buffer"]:
            ids, mask, _ = self._render(position)
            self.buffer.append((position, ids, mask))
        buffer_tokens = sum(len(ids) for _, ids, _ in self.buffer)
        assert buffer_tokens == state["buffer_tokens"], (
            f"restored buffer has {buffer_tokens} tokens, state says {state['buffer_tokens']}: "
            f"different tokenizer or task mixture?"
        )
        self.cursor, self.placed, self.rows = state["cursor"], state["placed"], state["rows"]
        self.tokens, self.pad_tokens, self.truncated = state["tokens"], state["pad_tokens"], state["truncated"]

    @property
    def pad_fraction(self):
        return self.pad_tokens / self.tokens if self.tokens else 0.0


def epoch_progress(loaders, device):
    """Epoch progress of the furthest slice, over all processes (all stop together when one has seen its share)."""
    progress = max(loader.progress for loader in loaders)
    if dist.is_available() and dist.is_initialized():
        t = torch.tensor(progress, dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        progress = t.item()
    return progress


def rollout_batch(sequences, masks, bos):
    """
    RL rollouts (prompt + generated tokens; mask 1 = sampled by the model) -> inputs, targets (B, L) int64 with
    L = longest - 1, right-padded with BOS / -1. Targets are -1 except where the model sampled the token: the prompt
    and the tool output forced by the engine carry no policy gradient.
    """
    L = max(len(seq) for seq in sequences) - 1
    inputs = torch.full((len(sequences), L), bos, dtype=torch.long)
    targets = torch.full((len(sequences), L), -1, dtype=torch.long)
    for b, (seq, mask) in enumerate(zip(sequences, masks)):
        assert len(seq) == len(mask), f"rollout {b}: {len(seq)} tokens but {len(mask)} mask entries"
        seq, mask = torch.tensor(seq, dtype=torch.long), torch.tensor(mask)
        inputs[b, : len(seq) - 1] = seq[:-1]
        targets[b, : len(seq) - 1] = torch.where(mask[1:] == 1, seq[1:], -1)
    return inputs, targets


def policy_gradient_backward(model, sequences, masks, advantages, batch_size, bos, scale):
    """
    Accumulate the gradient of -scale * sum over rollouts of advantage * (sum of log p of its sampled tokens), in
    forwards of batch_size rows. RL passes scale = world_size / (sampled tokens of the step over all processes):
    token-level normalization, with the optimizer's average over processes turned back into a sum.
    Returns this process's loss value (-scale * objective).
    """
    device = model.get_device()
    objective = 0.0
    for start in range(0, len(sequences), batch_size):
        end = start + batch_size
        inputs, targets = rollout_batch(sequences[start:end], masks[start:end], bos)  # (B, L) each
        adv = torch.tensor(advantages[start:end], dtype=torch.float32, device=device)
        logp = -model(inputs.to(device), targets.to(device), loss_reduction="none")  # (B, L), 0 where ignored
        pg = (logp * adv[:, None]).sum()
        (-pg * scale).backward()
        objective += pg.item()
    return -objective * scale


# -----------------------------------------------------------------------------
# Fine-tuning schedules and optimizer settings


def progress_lr_multiplier(progress, warmdown_ratio, final_lr_frac=0.0):
    """Constant 1, then linear to final_lr_frac over the last warmdown_ratio of progress (progress in [0, 1])."""
    progress = min(max(progress, 0.0), 1.0)
    if warmdown_ratio <= 0 or progress <= 1 - warmdown_ratio:
        return 1.0
    frac = (1 - progress) / warmdown_ratio  # 1 at the start of the warmdown, 0 at the end
    return final_lr_frac + (1 - final_lr_frac) * frac


def finetune_momentum(step, warmup_steps=300):
    """Muon momentum 0.85 -> 0.95 over the first warmup_steps steps (nanochat.md 9.2)."""
    frac = min(step / warmup_steps, 1.0) if warmup_steps > 0 else 1.0
    return 0.85 + frac * (0.95 - 0.85)


LR_KEYS = ("matrix_lr", "embedding_lr", "unembedding_lr", "scalar_lr")


def resolve_checkpoint(source, model_tag=None, step=None):
    """(checkpoint dir, tag, step) of a stage's checkpoint: the largest tag and its last step unless given."""
    from nanochat.checkpoint_manager import PHASE_DIRS, find_largest_model, find_last_step

    assert source in PHASE_DIRS, f"source must be one of {sorted(PHASE_DIRS)}, got {source!r}"
    checkpoints_dir = os.path.join(get_base_dir(), PHASE_DIRS[source])
    model_tag = model_tag or find_largest_model(checkpoints_dir)
    ckpt_dir = os.path.join(checkpoints_dir, model_tag)
    step = find_last_step(ckpt_dir) if step is None or step < 0 else step
    return ckpt_dir, model_tag, step


def inherited_optimizer_config(meta):
    """
    The GPT.setup_optimizer arguments of the run that wrote `meta`: the base LRs and the batch LR scale (before any
    stage's init_lr_frac). A base_train checkpoint has them in its dial hparams; post-training stages store them.
    """
    if "optimizer_config" in meta:
        return dict(meta["optimizer_config"])
    h = meta["hparams"]
    return {**{k: h[k] for k in LR_KEYS}, "batch_lr_scale": h["batch_lr_scale"]}


def stage_optimizer_config(meta, lr_overrides, total_batch_size=None):
    """
    A post-training stage's GPT.setup_optimizer arguments: those of the run that wrote `meta`, with each LR of
    `lr_overrides` (a mapping holding LR_KEYS: the stage's flags, -1 = inherit) that is > 0 in place of the parent's,
    and the batch LR scale carried over to this stage's `total_batch_size` by the dial's sqrt(batch) rule (None: the
    parent's scale as it is).
    """
    config = inherited_optimizer_config(meta)
    for key in LR_KEYS:
        if lr_overrides[key] > 0:
            config[key] = lr_overrides[key]
    if total_batch_size is not None:
        config["batch_lr_scale"] *= math.sqrt(total_batch_size / meta["total_batch_size"])
    return config


def scale_initial_lrs(optimizer, init_lr_frac):
    """Multiply every group's initial LR (the schedule's 1.0) by init_lr_frac."""
    for group in optimizer.param_groups:
        group["initial_lr"] = group["initial_lr"] * init_lr_frac
        group["lr"] = group["initial_lr"]


def load_optimizer_moments(optimizer, optim_state):
    """
    Load another stage's optimizer state (moments, momentum buffers) but keep this run's hyperparameters (LRs,
    betas, weight decay): MuonAdamW.load_state_dict would copy the saved groups' settings too.
    """
    fresh = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(optim_state)
    for group, settings in zip(optimizer.param_groups, fresh):
        group.update(settings)


# -----------------------------------------------------------------------------
# Chat evaluation

CHAT_EVAL_TASKS = ["ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "SpellingBee"]
EVAL_SHUFFLE_SEED = 42
BASELINES = {"ARC-Easy": 0.25, "ARC-Challenge": 0.25, "MMLU": 0.25, "GSM8K": 0.0, "HumanEval": 0.0, "SpellingBee": 0.0}


def load_eval_task(name):
    """The evaluation split of a chat task (its problems are visited in shuffled_order(len(task), 42))."""
    from tasks.arc import ARC
    from tasks.gsm8k import GSM8K
    from tasks.humaneval import HumanEval
    from tasks.mmlu import MMLU
    from tasks.spellingbee import SpellingBee

    loaders = {
        "ARC-Easy": lambda: ARC("ARC-Easy", "test"),
        "ARC-Challenge": lambda: ARC("ARC-Challenge", "test"),
        "MMLU": lambda: MMLU("all", "test"),
        "GSM8K": lambda: GSM8K("test"),
        "HumanEval": lambda: HumanEval(),
        "SpellingBee": lambda: SpellingBee(256, "test"),
    }
    assert name in loaders, f"unknown chat eval task {name!r}; known: {CHAT_EVAL_TASKS}"
    return loaders[name]()


def shuffled_order(n, seed):
    """A fixed permutation of range(n): eval problems are visited in this order (seed 42), so that the first
    max_problems are a random subset; RL visits its training problems in it too."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def centered(name, accuracy):
    baseline = BASELINES[name]
    return (accuracy - baseline) / (1 - baseline)


def chatcore(results):
    """Mean centered accuracy over the tasks in `results` (task name -> accuracy)."""
    return sum(centered(name, acc) for name, acc in results.items()) / len(results)


def sum_over_ranks(values, device):
    """Element-wise sum of a list of numbers over all ranks (identity on one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def problem_indices(task, max_problems):
    """(n, this rank's task indices): the first n = max_problems (-1 or None: all) of the shuffled order,
    strided over ranks."""
    n = len(task) if max_problems is None or max_problems < 0 else min(max_problems, len(task))
    _, rank, _, world_size = get_dist_info()
    order = shuffled_order(len(task), EVAL_SHUFFLE_SEED)
    return n, [order[j] for j in range(rank, n, world_size)]


class Progress:
    """One line every ~10% of the work (rank 0's share), with the elapsed time and an ETA."""

    def __init__(self, name, total, unit="problems"):
        self.name, self.total, self.unit = name, total, unit
        self.t0, self.next_report = time.perf_counter(), 0.1

    def update(self, done):
        if self.total and done / self.total >= self.next_report and done < self.total:
            elapsed = time.perf_counter() - self.t0
            eta = elapsed * (self.total - done) / done
            print0(f"  {self.name}: {done}/{self.total} {self.unit} | {elapsed:.0f}s elapsed | eta {eta:.0f}s")
            self.next_report = math.floor(done / self.total * 10 + 1) / 10


@torch.no_grad()
def predict_letters(model, tokenizer, conversations):
    """
    The answer letter the model picks for each multiple-choice conversation: one forward over the prompts
    right-padded with BOS (causal attention: padding after a prompt cannot change its logits), then the argmax of
    the last prompt position's logits over that problem's letters.
    """
    bos = tokenizer.get_bos_token_id()
    prompts = [tokenizer.render_for_completion(conversation) for conversation in conversations]
    ids = torch.full((len(prompts), max(len(p) for p in prompts)), bos, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, : len(p)] = torch.tensor(p)
    logits = model(ids.to(model.get_device()))  # (B, T, V)
    predicted = []
    for b, (conversation, p) in enumerate(zip(conversations, prompts)):
        letters = conversation["letters"]
        letter_ids = []
        for letter in letters:
            encoded = tokenizer.encode(letter)
            assert len(encoded) == 1, f"answer letter {letter!r} is {len(encoded)} tokens, not 1"
            letter_ids.append(encoded[0])
        predicted.append(letters[int(logits[b, len(p) - 1, letter_ids].argmax())])
    return predicted


def evaluate_categorical(model, tokenizer, task, batch_size=8, max_problems=None):
    """
    Accuracy on a multiple-choice task, batch_size problems per forward. Returns (accuracy, num_problems).
    A prompt longer than the model's context is scored wrong (counted and printed).
    """
    device = model.get_device()
    n, mine = problem_indices(task, max_problems)
    correct, too_long = 0, 0
    progress = Progress(task.__class__.__name__, len(mine))
    for start in range(0, len(mine), batch_size):
        batch = [task[i] for i in mine[start : start + batch_size]]
        fits = [len(tokenizer.render_for_completion(c)) <= model.config.sequence_len for c in batch]
        too_long += fits.count(False)
        batch = [c for c, ok in zip(batch, fits) if ok]
        if batch:
            predicted = predict_letters(model, tokenizer, batch)
            correct += sum(bool(task.evaluate(c, letter)) for c, letter in zip(batch, predicted))
        progress.update(start + len(fits))
    correct, too_long = sum_over_ranks([correct, too_long], device)
    if too_long:
        print0(f"  {int(too_long)} of {n} prompts exceed the context of {model.config.sequence_len}: scored wrong")
    return correct / n, n


@torch.no_grad()
def generative_outcomes(
    model, tokenizer, task, num_samples=1, max_new_tokens=512, temperature=0.0, top_k=50, batch_size=8,
    max_problems=None, seed=42,
):  # fmt: skip
    """
    Sample num_samples completions per problem (Engine.generate_multi, batch_size rows decoded together) and
    evaluate each. Returns (outcomes, num_problems): outcomes is this rank's list of per-problem lists of bools.
    A prompt that does not fit the model's context is scored wrong on every sample (counted and printed).
    """
    from nanochat.engine import FINISHED, Engine

    engine = Engine(model, tokenizer)
    device = model.get_device()
    n, mine = problem_indices(task, max_problems)
    conversations = {i: task[i] for i in mine}
    prompts = {i: tokenizer.render_for_completion(conversations[i]) for i in mine}
    outcomes = {i: [False] * num_samples for i in mine}
    rows = [(i, s) for i in mine for s in range(num_samples) if len(prompts[i]) < model.config.sequence_len]
    too_long = sum(len(prompts[i]) >= model.config.sequence_len for i in mine)
    progress = Progress(task.__class__.__name__, len(rows), unit="samples")
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        generated = [[] for _ in chunk]
        chunk_seed = seed + start  # one generator per chunk: samples depend on the batch layout, not on time
        batch_prompts = [prompts[i] for i, _ in chunk]
        for token_column, _ in engine.generate_multi(
            batch_prompts, max_tokens=max_new_tokens, temperature=temperature, top_k=top_k, seed=chunk_seed
        ):
            for r, token in enumerate(token_column):
                if token != FINISHED and token not in engine.stop_token_ids:
                    generated[r].append(token)
        for (i, s), tokens in zip(chunk, generated):
            outcomes[i][s] = bool(task.evaluate(conversations[i], tokenizer.decode(tokens)))
        progress.update(start + len(chunk))
    (too_long,) = sum_over_ranks([too_long], device)
    if too_long:
        print0(f"  {int(too_long)} of {n} prompts do not fit the context of {model.config.sequence_len}: scored wrong")
    return [outcomes[i] for i in mine], n


def pass_at_k(outcomes, num_problems, k, device):
    """Fraction of all ranks' problems with at least one passing sample among the first k."""
    (passed,) = sum_over_ranks([sum(any(o[:k]) for o in outcomes)], device)
    return passed / num_problems


def run_chat_eval(name, model, tokenizer, batch_size=8, max_problems=None, **generation):
    """(accuracy, problems evaluated) on one task of CHAT_EVAL_TASKS: categorical, or pass@num_samples for
    generative tasks."""
    task = load_eval_task(name)
    if task.eval_type == "categorical":
        return evaluate_categorical(model, tokenizer, task, batch_size=batch_size, max_problems=max_problems)
    outcomes, n = generative_outcomes(
        model, tokenizer, task, batch_size=batch_size, max_problems=max_problems, **generation
    )
    return pass_at_k(outcomes, n, generation.get("num_samples", 1), model.get_device()), n
