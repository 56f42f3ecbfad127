"""
Inference: KV-cached sampling from a GPT, with a calculator tool spliced into the token stream.

    engine = Engine(model, tokenizer)
    for token_column, mask_column in engine.generate(prompt_ids, num_samples=4, max_tokens=64, temperature=0.8):
        ...  # one entry per sample and step; mask 1 = sampled by the model, 0 = forced (tool output)
    print(engine.stop_reasons)  # per row: "end" | "max_tokens" | "context"

- Prefill once, decode many: the prompt runs through the model once (batch 1) and its KV cache is copied into every
  sample's row, so num_samples costs one prefill; each row then samples its own first token from the shared logits.
- generate_multi() decodes DIFFERENT prompts together: each is prefilled on its own and copied into its row; rows sit
  at their own positions (the model offsets rotary and masking by kv_cache.cache_seqlens per row).
- Sampling: temperature 0 is greedy (argmax); otherwise logits / temperature, then top-k, then top-p (nucleus), then
  a draw from a torch.Generator seeded per call, so one seed gives the same samples on the same device.
- Stops, per row, in this order of precedence: the row emits a stop token (<|assistant_end|> or <|bos|>: the token
  IS yielded, then the row is finished) -> "end"; max_tokens tokens yielded (forced ones count) -> "max_tokens"; the
  row's sequence (prompt + yielded tokens) reaches model.config.sequence_len -> "context". A row never holds more
  than sequence_len tokens, so its sequence can always be fed back to the model (next chat turn, RL training).
  A prompt of exactly sequence_len tokens yields nothing (reason "context"); a longer one raises ValueError (on the
  first next(): generate is a generator). stop_reasons belongs to the latest call: one generation at a time per Engine.
- Finished rows yield FINISHED (-1) with mask 0 while other rows still run, so columns keep one entry per row.
  Their cache position is pinned: the filler token they are fed overwrites one slot that nothing reads again.
- Tool use: after <|python_start|> a row collects tokens until <|python_end|>, decodes them, and evaluates the text
  with use_calculator(); on a result it forces <|output_start|> str(result) <|output_end|> (mask 0) before sampling
  resumes. The calculator is a small interpreter over Python's ast: numbers, arithmetic and a few string operations.
  Code (names, attributes, calls outside a whitelist, lambdas, comprehensions, ...) is refused by a static check of
  the whole tree before any of it is evaluated; eval/exec are never called; an operation whose result would be too
  large (9**9**9, 'a'*10**10) is refused from its operands before it runs; the evaluation has a step budget and a
  wall-clock deadline checked at every node.
- The slow, obvious reference is GPT.generate (full recompute per token, no cache); tests check that greedy outputs
  of both agree, with GQA and with sliding windows shorter than the sequence.
"""

import ast
import math
import re
import time
from collections import deque

import torch
import torch.nn.functional as F

from nanochat.gpt import KVCache

FINISHED = -1  # token_column entry of a row that has already stopped (its mask entry is 0)

# -----------------------------------------------------------------------------
# Calculator tool: a whitelist interpreter over the AST of one expression

MAX_EXPR_CHARS = 256  # longer text is refused before parsing
MAX_AST_NODES = 100  # expression nodes: "(48/2)+48*3-12" has 9, '"strawberry".count("r")' has 4
MAX_AST_DEPTH = 32  # a flat sum of n terms nests n-1 deep (left-associative)
MAX_INT_BITS = 1024  # |int| < 2**1024, the range of a float: str(result) stays a few hundred digits
MAX_EXPONENT = 1000
MAX_STR_CHARS = 1000
MAX_ROUND_DIGITS = 15  # round(x, n) with a huge n would build 10**n internally

_BINARY_OPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow)
_UNARY_OPS = (ast.UAdd, ast.USub)
# method name -> (unbound str method, max number of arguments); arguments must be str or int
_STR_METHODS = {
    "count": (str.count, 3),
    "find": (str.find, 3),
    "startswith": (str.startswith, 3),
    "endswith": (str.endswith, 3),
    "lower": (str.lower, 0),
    "upper": (str.upper, 0),
    "strip": (str.strip, 1),
}
_FUNCTIONS = ("len", "abs", "round", "min", "max")


class CalculatorRefused(Exception):
    """The expression is outside the calculator's language or budgets. Nothing unsafe was run."""


def _is_number(value):
    return type(value) in (int, float, bool)


def _checked(value):
    """Every intermediate and final value passes here: bounded ints and strings, finite floats, nothing else."""
    if type(value) in (int, bool):
        if abs(value).bit_length() > MAX_INT_BITS:
            raise CalculatorRefused(f"integer larger than 2**{MAX_INT_BITS}")
    elif type(value) is float:
        if not math.isfinite(value):
            raise CalculatorRefused("result is not finite")
    elif type(value) is str:
        if len(value) > MAX_STR_CHARS:
            raise CalculatorRefused(f"string longer than {MAX_STR_CHARS} characters")
    else:
        raise CalculatorRefused(f"values of type {type(value).__name__} are not allowed")
    return value


def parse_calculator_expression(expr):
    """Parse and validate the whole expression, without evaluating any of it. Raises CalculatorRefused."""
    if not isinstance(expr, str):
        raise CalculatorRefused("expression must be a str")
    if len(expr) > MAX_EXPR_CHARS:
        raise CalculatorRefused(f"expression longer than {MAX_EXPR_CHARS} characters")
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise CalculatorRefused(f"not a valid expression: {type(e).__name__}") from None
    n_nodes = sum(1 for node in ast.walk(tree) if isinstance(node, ast.expr))
    if n_nodes > MAX_AST_NODES:
        raise CalculatorRefused(f"expression has {n_nodes} nodes (max {MAX_AST_NODES})")
    _validate(tree.body, depth=1)
    return tree


def _validate(node, depth):
    if depth > MAX_AST_DEPTH:
        raise CalculatorRefused(f"expression nested deeper than {MAX_AST_DEPTH}")
    if isinstance(node, ast.Constant):
        if type(node.value) not in (int, float, str):
            raise CalculatorRefused(f"constant of type {type(node.value).__name__} is not allowed")
        _checked(node.value)
    elif isinstance(node, ast.BinOp):
        if not isinstance(node.op, _BINARY_OPS):
            raise CalculatorRefused(f"operator {type(node.op).__name__} is not allowed")
        _validate(node.left, depth + 1)
        _validate(node.right, depth + 1)
    elif isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, _UNARY_OPS):
            raise CalculatorRefused(f"operator {type(node.op).__name__} is not allowed")
        _validate(node.operand, depth + 1)
    elif isinstance(node, ast.Subscript):
        _validate(node.value, depth + 1)
        if isinstance(node.slice, ast.Slice):
            for part in (node.slice.lower, node.slice.upper, node.slice.step):
                if part is not None:
                    _validate(part, depth + 1)
        else:
            _validate(node.slice, depth + 1)
    elif isinstance(node, ast.Call):
        if node.keywords or any(isinstance(arg, ast.Starred) for arg in node.args):
            raise CalculatorRefused("keyword and starred arguments are not allowed")
        func = node.func
        if isinstance(func, ast.Name):
            if func.id not in _FUNCTIONS:
                raise CalculatorRefused(f"function {func.id!r} is not allowed")
        elif isinstance(func, ast.Attribute):
            if func.attr not in _STR_METHODS:
                raise CalculatorRefused(f"method {func.attr!r} is not allowed")
            _validate(func.value, depth + 1)
        else:
            raise CalculatorRefused("only named functions and string methods can be called")
        for arg in node.args:
            _validate(arg, depth + 1)
    else:
        # names, attributes, lambdas, comprehensions, f-strings, walrus, containers, comparisons, ...
        raise CalculatorRefused(f"{type(node).__name__} is not allowed")


class _Evaluator:
    """Walks a validated tree. Each operation is size-checked BEFORE it runs, so no single step can be slow, and the
    deadline and step budget are checked before every node."""

    def __init__(self, deadline, max_steps):
        self.deadline = deadline
        self.max_steps = max_steps
        self.steps = 0

    def eval(self, node):
        self.steps += 1
        if self.steps > self.max_steps:
            raise CalculatorRefused("step budget exceeded")
        if time.perf_counter() > self.deadline:
            raise CalculatorRefused("time limit exceeded")
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.UnaryOp):
            value = self.eval(node.operand)
            if not _is_number(value):
                raise CalculatorRefused("unary operators apply to numbers only")
            return _checked(-value if isinstance(node.op, ast.USub) else +value)
        if isinstance(node, ast.BinOp):
            return _checked(self.binary(node.op, self.eval(node.left), self.eval(node.right)))
        if isinstance(node, ast.Subscript):
            return _checked(self.subscript(node))
        if isinstance(node, ast.Call):
            return _checked(self.call(node))
        raise CalculatorRefused(f"{type(node).__name__} is not allowed")  # unreachable after _validate

    def binary(self, op, a, b):
        if isinstance(op, ast.Add):
            if type(a) is str and type(b) is str:
                if len(a) + len(b) > MAX_STR_CHARS:
                    raise CalculatorRefused(f"string longer than {MAX_STR_CHARS} characters")
                return a + b
        elif isinstance(op, ast.Mult):
            if type(a) is str or type(b) is str:
                text, times = (a, b) if type(a) is str else (b, a)
                if type(times) not in (int, bool):
                    raise CalculatorRefused("a string can only be repeated an int number of times")
                if len(text) * max(times, 0) > MAX_STR_CHARS:
                    raise CalculatorRefused(f"string repetition longer than {MAX_STR_CHARS} characters")
                return text * max(times, 0)  # a huge negative count would overflow; it means "" anyway
            both_int = type(a) in (int, bool) and type(b) in (int, bool)
            if both_int and abs(a).bit_length() + abs(b).bit_length() > MAX_INT_BITS + 1:
                raise CalculatorRefused(f"integer larger than 2**{MAX_INT_BITS}")
        elif isinstance(op, ast.Pow):
            if not (_is_number(a) and _is_number(b)):
                raise CalculatorRefused("** applies to numbers only")
            if type(b) in (int, bool):
                if abs(b) > MAX_EXPONENT:
                    raise CalculatorRefused(f"exponent larger than {MAX_EXPONENT}")
                # |a| >= 2**(bits-1), so a lower bound on the result's size, checked before computing it
                if type(a) in (int, bool) and b > 0 and (abs(a).bit_length() - 1) * b > MAX_INT_BITS:
                    raise CalculatorRefused(f"integer larger than 2**{MAX_INT_BITS}")
            if a < 0 and type(b) is float and not b.is_integer():
                raise CalculatorRefused("fractional power of a negative number is complex")
        if not (_is_number(a) and _is_number(b)):
            # also keeps str % ... (printf formatting, e.g. "%0999999999d" % 1) out
            raise CalculatorRefused(f"{type(op).__name__} needs numbers")
        try:
            if isinstance(op, ast.Add):
                return a + b
            if isinstance(op, ast.Sub):
                return a - b
            if isinstance(op, ast.Mult):
                return a * b
            if isinstance(op, ast.Div):
                return a / b
            if isinstance(op, ast.FloorDiv):
                return a // b
            if isinstance(op, ast.Mod):
                return a % b
            return a**b
        except (ArithmeticError, ValueError) as e:  # division by zero, float overflow
            raise CalculatorRefused(f"arithmetic error: {type(e).__name__}") from None

    def subscript(self, node):
        value = self.eval(node.value)
        if type(value) is not str:
            raise CalculatorRefused("only strings can be indexed")
        if isinstance(node.slice, ast.Slice):
            parts = [None if p is None else self.eval(p) for p in (node.slice.lower, node.slice.upper, node.slice.step)]
            if any(p is not None and type(p) not in (int, bool) for p in parts):
                raise CalculatorRefused("slice bounds must be ints")
            if parts[2] == 0:
                raise CalculatorRefused("slice step cannot be zero")
            return value[parts[0] : parts[1] : parts[2]]
        index = self.eval(node.slice)
        if type(index) not in (int, bool) or not -len(value) <= index < len(value):
            raise CalculatorRefused("string index out of range or not an int")
        return value[index]

    def call(self, node):
        if isinstance(node.func, ast.Attribute):
            method, max_args = _STR_METHODS[node.func.attr]
            target = self.eval(node.func.value)
            args = [self.eval(arg) for arg in node.args]
            if type(target) is not str:
                raise CalculatorRefused(f".{node.func.attr}() applies to strings only")
            if len(args) > max_args or any(type(arg) not in (str, int) for arg in args):
                raise CalculatorRefused(f"bad arguments to .{node.func.attr}()")
            try:
                return method(target, *args)
            except (TypeError, ValueError, OverflowError) as e:  # e.g. "abc".count("a", 10**300)
                raise CalculatorRefused(f"bad arguments to .{node.func.attr}(): {type(e).__name__}") from None
        name = node.func.id
        args = [self.eval(arg) for arg in node.args]
        if name == "len":
            if len(args) != 1 or type(args[0]) is not str:
                raise CalculatorRefused("len() takes one string")
            return len(args[0])
        if not args or not all(_is_number(arg) for arg in args):
            raise CalculatorRefused(f"{name}() takes numbers")
        if name == "abs" and len(args) == 1:
            return abs(args[0])
        if name == "round" and len(args) in (1, 2):
            if len(args) == 2 and (type(args[1]) is not int or abs(args[1]) > MAX_ROUND_DIGITS):
                raise CalculatorRefused(f"round() digits must be an int within +-{MAX_ROUND_DIGITS}")
            return round(*args)
        if name in ("min", "max") and 2 <= len(args) <= 16:
            return min(args) if name == "min" else max(args)
        raise CalculatorRefused(f"bad arguments to {name}()")


_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def evaluate_calculator(expr, timeout_s=1.0):
    """Value of expr (int, float, bool or str) or CalculatorRefused. The tree is validated completely first."""
    deadline = time.perf_counter() + timeout_s
    if isinstance(expr, str) and not re.search(r"[A-Za-z'\"]", expr):
        expr = _THOUSANDS_COMMA.sub("", expr)  # "1,234 * 2" in pure arithmetic means 1234 * 2 (GSM8K style)
    tree = parse_calculator_expression(expr)
    return _Evaluator(deadline, max_steps=2 * MAX_AST_NODES).eval(tree.body)


def use_calculator(expr, timeout_s=1.0):
    """The calculator tool: the value of expr, or None when it is refused or fails."""
    try:
        return evaluate_calculator(expr, timeout_s)
    except CalculatorRefused:
        return None


# -----------------------------------------------------------------------------
# Sampling


def sample_next_token(logits, generator, temperature=1.0, top_k=None, top_p=None):
    """logits (B, V) -> next tokens (B,) int64. temperature 0 = argmax; top_k keeps the k largest logits; top_p keeps
    the smallest set of top tokens whose probability reaches top_p (always at least one)."""
    assert temperature >= 0.0, f"temperature must be >= 0, got {temperature}"
    assert top_k is None or top_k >= 0, f"top_k must be >= 0 (0 or None = off), got {top_k}"
    assert top_p is None or 0.0 < top_p <= 1.0, f"top_p must be in (0, 1] (None = off), got {top_p}"
    if temperature == 0.0:
        return torch.argmax(logits, dim=-1)
    values, indices = logits.float() / temperature, None  # indices: vocab id of each column of values, when not all
    if top_k and top_k < values.size(-1):
        # sample among the k values only: drawing over the whole vocab was the costliest op of a CPU decode step
        values, indices = torch.topk(values, top_k, dim=-1)  # sorted, largest first
    if top_p is not None and top_p < 1.0:
        if indices is None:
            values, indices = torch.sort(values, dim=-1, descending=True)
        probs = F.softmax(values, dim=-1)
        # drop a token when the tokens ranked above it already reach top_p (the top token is never dropped)
        values = values.masked_fill(probs.cumsum(dim=-1) - probs >= top_p, float("-inf"))
    choice = torch.multinomial(F.softmax(values, dim=-1), num_samples=1, generator=generator)  # (B, 1)
    return (choice if indices is None else indices.gather(-1, choice)).squeeze(-1)


# -----------------------------------------------------------------------------
# Engine


class _Row:
    """Decoding state of one row (one sample or one prompt)."""

    def __init__(self, n_tokens):
        self.n_tokens = n_tokens  # length of the row's sequence: prompt + yielded tokens
        self.n_generated = 0
        self.forced = deque()  # tool output waiting to be emitted (mask 0)
        self.python_tokens = None  # a list while inside <|python_start|> ... <|python_end|>
        self.stop_reason = None


class Engine:
    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        self.python_start = tokenizer.encode_special("<|python_start|>")
        self.python_end = tokenizer.encode_special("<|python_end|>")
        self.output_start = tokenizer.encode_special("<|output_start|>")
        self.output_end = tokenizer.encode_special("<|output_end|>")
        self.bos = tokenizer.get_bos_token_id()
        # A row stops after yielding one of these. A caller may replace the set (the benchmark empties it to time
        # full-length decoding).
        self.stop_token_ids = {tokenizer.encode_special("<|assistant_end|>"), self.bos}
        self.stop_reasons = []  # per row, filled in as rows stop; complete when the generator is exhausted

    # -------------------------------------------------------------------------
    # Public API

    @torch.inference_mode()
    def generate(self, tokens, num_samples=1, max_tokens=None, temperature=1.0, top_k=None, top_p=None, seed=42):
        """Stream num_samples continuations of one prompt: yields (token_column, mask_column), one entry per row."""
        assert num_samples >= 1, f"num_samples must be >= 1, got {num_samples}"
        self._check_prompt(tokens)
        rows = [_Row(len(tokens)) for _ in range(num_samples)]
        if self._finish_before_start(rows, max_tokens):
            return
        kv_cache = self._new_kv_cache(num_samples, self._cache_len(len(tokens), max_tokens))
        if num_samples == 1:
            logits = self._prefill(tokens, kv_cache)
        else:
            prefill_cache = self._new_kv_cache(1, len(tokens))
            logits = self._prefill(tokens, prefill_cache).expand(num_samples, -1)
            kv_cache.copy_from(prefill_cache, src_row=0)
            del prefill_cache
        yield from self._decode(kv_cache, logits, rows, max_tokens, temperature, top_k, top_p, seed)

    @torch.inference_mode()
    def generate_multi(self, prompts, max_tokens=None, temperature=1.0, top_k=None, top_p=None, seed=42):
        """Stream one continuation per prompt, prompts of any lengths decoded together (row i = prompts[i])."""
        assert len(prompts) >= 1, "generate_multi needs at least one prompt"
        for tokens in prompts:
            self._check_prompt(tokens)
        rows = [_Row(len(tokens)) for tokens in prompts]
        if self._finish_before_start(rows, max_tokens):
            return
        longest = max(len(tokens) for tokens in prompts)
        kv_cache = self._new_kv_cache(len(prompts), self._cache_len(longest, max_tokens))
        prefill_cache = self._new_kv_cache(1, longest)
        vocab_size = self.model.config.vocab_size
        logits = torch.zeros(len(prompts), vocab_size, device=kv_cache.cache_seqlens.device)
        for i, tokens in enumerate(prompts):
            if rows[i].stop_reason is not None:  # this prompt fills the context: nothing to prefill
                continue
            prefill_cache.reset()
            logits[i] = self._prefill(tokens, prefill_cache)[0]
            kv_cache.copy_from(prefill_cache, src_row=0, dst_rows=[i])
        del prefill_cache
        yield from self._decode(kv_cache, logits, rows, max_tokens, temperature, top_k, top_p, seed)

    def generate_batch(self, tokens, num_samples=1, **kwargs):
        """Non-streaming generate: (results, masks), each row = prompt + generated tokens WITHOUT the stop token
        (engine.stop_reasons says which rows ended on one); masks are 0 over the prompt and the tool output."""
        results = [list(tokens) for _ in range(num_samples)]
        masks = [[0] * len(tokens) for _ in range(num_samples)]
        for token_column, mask_column in self.generate(tokens, num_samples, **kwargs):
            for i, (token, mask) in enumerate(zip(token_column, mask_column)):
                if token == FINISHED or token in self.stop_token_ids:
                    continue
                results[i].append(token)
                masks[i].append(mask)
        return results, masks

    # -------------------------------------------------------------------------
    # Internals

    def _check_prompt(self, tokens):
        sequence_len = self.model.config.sequence_len
        assert len(tokens) >= 1, "the prompt must hold at least one token (BOS)"
        if len(tokens) > sequence_len:
            raise ValueError(f"prompt of {len(tokens)} tokens exceeds the model's context of {sequence_len} tokens")

    def _finish_before_start(self, rows, max_tokens):
        """Mark rows that cannot yield anything; True when that is every row (then the generator yields nothing)."""
        assert max_tokens is None or max_tokens >= 0, f"max_tokens must be >= 0 or None, got {max_tokens}"
        for row in rows:
            if max_tokens == 0:
                row.stop_reason = "max_tokens"
            elif row.n_tokens >= self.model.config.sequence_len:
                row.stop_reason = "context"
        self.stop_reasons = [row.stop_reason for row in rows]
        return all(row.stop_reason is not None for row in rows)

    def _cache_len(self, prompt_len, max_tokens):
        # the last yielded token is never fed back, so prompt + max_tokens - 1 slots would do; one spare keeps it simple
        sequence_len = self.model.config.sequence_len
        return sequence_len if max_tokens is None else min(sequence_len, prompt_len + max_tokens)

    def _new_kv_cache(self, batch_size, seq_len):
        config = self.model.config
        device = next(self.model.parameters()).device
        return KVCache(
            batch_size=batch_size,
            seq_len=seq_len,
            n_kv_head=config.n_kv_head,
            head_dim=config.n_embd // config.n_head,
            n_layer=config.n_layer,
            device=device,
            dtype=self.model.compute_dtype,
        )

    def _prefill(self, tokens, kv_cache):
        """Run the prompt through the model (batch 1) into kv_cache; logits (1, V) for the next token."""
        device = kv_cache.cache_seqlens.device
        ids = torch.tensor([tokens], dtype=torch.long, device=device)
        return self.model(ids, kv_cache=kv_cache)[:, -1, :]

    def _step_tool(self, row, token):
        """The calculator state machine of one row, fed every token the row yields."""
        if token == self.python_start:
            row.python_tokens = []
        elif token == self.python_end and row.python_tokens is not None:
            result = use_calculator(self.tokenizer.decode(row.python_tokens))
            row.python_tokens = None
            if result is not None:
                row.forced.extend([self.output_start, *self.tokenizer.encode(str(result)), self.output_end])
        elif row.python_tokens is not None:
            row.python_tokens.append(token)

    def _decode(self, kv_cache, logits, rows, max_tokens, temperature, top_k, top_p, seed):
        """The decode loop shared by generate and generate_multi; logits (B, V) predict each row's next token."""
        sequence_len = self.model.config.sequence_len
        device = kv_cache.cache_seqlens.device
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
        finished = torch.zeros(len(rows), dtype=torch.bool, device=device)
        pinned_pos = torch.zeros(len(rows), dtype=kv_cache.cache_seqlens.dtype, device=device)
        for i, row in enumerate(rows):
            if row.stop_reason is not None:  # a prompt that fills the context (generate_multi)
                finished[i] = True
                pinned_pos[i] = row.n_tokens - 1
        while True:
            sampled = sample_next_token(logits, generator, temperature, top_k, top_p).tolist()
            token_column, mask_column = [], []
            for i, row in enumerate(rows):
                if row.stop_reason is not None:
                    token_column.append(FINISHED)
                    mask_column.append(0)
                    continue
                if row.forced:
                    token, mask = row.forced.popleft(), 0
                else:
                    token, mask = sampled[i], 1
                row.n_tokens += 1
                row.n_generated += 1
                self._step_tool(row, token)
                if token in self.stop_token_ids:
                    row.stop_reason = "end"
                elif max_tokens is not None and row.n_generated >= max_tokens:
                    row.stop_reason = "max_tokens"
                elif row.n_tokens >= sequence_len:
                    row.stop_reason = "context"
                if row.stop_reason is not None:
                    finished[i] = True
                    # the filler fed from now on lands in the slot of this last token, which is never fed itself
                    pinned_pos[i] = row.n_tokens - 1
                token_column.append(token)
                mask_column.append(mask)
            self.stop_reasons = [row.stop_reason for row in rows]
            yield token_column, mask_column
            if all(row.stop_reason is not None for row in rows):
                return
            ids = torch.tensor([[self.bos if t == FINISHED else t] for t in token_column], device=device)
            if any(row.stop_reason is not None for row in rows):
                kv_cache.cache_seqlens.copy_(torch.where(finished, pinned_pos, kv_cache.cache_seqlens))
            logits = self.model(ids, kv_cache=kv_cache)[:, -1, :]


def parse_assistant_tokens(tokenizer, ids):
    """Generated assistant tokens -> message content for render_conversation: a str, or a list of text / python /
    python_output parts when the tool was used. A trailing stop token is dropped."""
    special = tokenizer.encode_special
    markers = {
        special("<|python_start|>"): ("python", True),
        special("<|python_end|>"): ("python", False),
        special("<|output_start|>"): ("python_output", True),
        special("<|output_end|>"): ("python_output", False),
    }
    stops = {special("<|assistant_end|>"), tokenizer.get_bos_token_id()}
    parts, kind, chunk = [], "text", []

    def flush():
        if chunk or kind != "text":
            parts.append({"type": kind, "text": tokenizer.decode(chunk)})
        chunk.clear()

    for token in ids:
        if token in stops:
            break
        if token in markers:
            flush()
            part_type, opens = markers[token]
            kind = part_type if opens else "text"
            continue
        chunk.append(token)
    flush()
    parts = [p for p in parts if p["type"] != "text" or p["text"]]
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts
