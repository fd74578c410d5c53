"""The demo's harder task: a character-level language model in plain numpy.

A fixed-context model (Bengio et al. 2003): the previous ``context`` characters are embedded,
concatenated, passed through a tanh layer, and a softmax predicts the next character. The text
is generated here from a small grammar with a fixed seed, so the task needs no download and is
the same on every machine. Its weight matrices are large enough (over 4096 elements) to get
8-bit state, which is what the demo compares: the loss with float32, bfloat16 and 8-bit state.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .parameter import Parameter

_SUBJECTS = ["the cat", "a dog", "my old friend", "the river", "every child", "the small bird"]
_VERBS = ["sees", "follows", "remembers", "quietly finds", "never forgets", "sings to"]
_OBJECTS = ["the moon", "a red apple", "the long road", "her brother", "the open window"]
_ENDINGS = [".", " today.", " at night.", " again and again.", ", and then rests."]


def make_text(sentences: int, rng: np.random.Generator) -> str:
    """``sentences`` sentences from a small grammar, lower case, with spaces and punctuation."""
    parts = []
    for _ in range(sentences):
        parts.append(
            f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"
            f"{rng.choice(_ENDINGS)}"
        )
    return " ".join(parts)


class CharModel:
    """Embedding, one tanh layer over the concatenated context, softmax over characters."""

    def __init__(
        self, vocab: int, context: int, embed: int, hidden: int, rng: np.random.Generator
    ) -> None:
        def normal(shape: tuple[int, ...], scale: float) -> np.ndarray:
            return rng.normal(0.0, scale, shape).astype(np.float32)

        self.context = context
        self.embedding = Parameter(normal((vocab, embed), 0.5), name="embedding")
        self.w1 = Parameter(normal((context * embed, hidden), (context * embed) ** -0.5), name="w1")
        self.b1 = Parameter(np.zeros(hidden, np.float32), name="b1")
        self.w2 = Parameter(normal((hidden, vocab), hidden**-0.5), name="w2")
        self.b2 = Parameter(np.zeros(vocab, np.float32), name="b2")
        self.params = [self.embedding, self.w1, self.b1, self.w2, self.b2]

    def loss_and_grads(self, windows: np.ndarray, targets: np.ndarray) -> float:
        """Mean cross-entropy (nats per character) on a batch; sets every ``grad``."""
        n = len(targets)
        e = self.embedding.data[windows]  # (n, context, embed)
        x = e.reshape(n, -1)
        h = np.tanh(x @ self.w1.data + self.b1.data)
        logits = h @ self.w2.data + self.b2.data
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        loss = float(-np.log(probs[np.arange(n), targets] + 1e-12).mean())
        delta = probs
        delta[np.arange(n), targets] -= 1.0
        delta /= n
        self.w2.grad = (h.T @ delta).astype(np.float32)
        self.b2.grad = delta.sum(axis=0).astype(np.float32)
        dh = (delta @ self.w2.data.T) * (1.0 - h**2)
        self.w1.grad = (x.T @ dh).astype(np.float32)
        self.b1.grad = dh.sum(axis=0).astype(np.float32)
        dx = (dh @ self.w1.data.T).reshape(e.shape)
        grad = np.zeros_like(self.embedding.data)
        np.add.at(grad, windows, dx)
        self.embedding.grad = grad
        return loss


def train_charlm(
    make_optimizer: Callable[[list[Parameter]], Any],
    *,
    steps: int = 1500,
    batch_size: int = 128,
    context: int = 8,
    seed: int = 0,
    every: int = 50,
) -> dict[str, Any]:
    """Train from ``seed``; return the training loss averaged over every ``every`` steps and
    the final held-out loss (the last 10% of the text, in nats per character)."""
    rng = np.random.default_rng(seed)
    text = make_text(4000, rng)
    chars = sorted(set(text))
    codes = np.array([chars.index(c) for c in text], np.int64)
    split = int(len(codes) * 0.9)
    starts = np.arange(len(codes) - context)
    train_starts = starts[starts + context < split]
    test_starts = starts[starts >= split]

    def windows(at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return codes[at[:, None] + np.arange(context)], codes[at + context]

    model = CharModel(len(chars), context, 24, 256, rng)
    optimizer = make_optimizer(model.params)
    curve, running = [], []
    for _ in range(steps):
        batch = rng.choice(train_starts, batch_size)
        running.append(model.loss_and_grads(*windows(batch)))
        optimizer.step()
        if len(running) == every:
            curve.append(float(np.mean(running)))
            running = []
    held_out = model.loss_and_grads(*windows(test_starts))
    return {"losses": curve, "held_out": held_out, "every": every}
