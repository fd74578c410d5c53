"""The parameter shapes of whole models, for the benchmark's whole-model workloads.

Each function lists ``(name, shape)`` for every trainable tensor of the model, in the order
the model defines them. The arrays are numpy's: only the shapes matter for timing, so no
framework is needed to build them. The totals are the published parameter counts
(GPT-2 small 124,439,808; ResNet-50 25,557,032; BERT-base 109,482,240), which the test suite
checks against torch modules built independently.
"""

from __future__ import annotations

__all__ = ["MODELS", "Shapes", "bert_base_shapes", "gpt2_small_shapes", "resnet50_shapes"]

#: ``(tensor name, shape)`` for each trainable tensor of a model.
Shapes = list[tuple[str, tuple[int, ...]]]


def gpt2_small_shapes() -> Shapes:
    """GPT-2 small (124M): 148 tensors.

    Token and position embeddings, 12 transformer blocks, a final LayerNorm. The language-model
    head shares the token embedding's weight, so it adds no tensor. The attention and MLP
    projections are stored as (in, out) matrices, as in the original checkpoint.
    """
    width, vocab, context = 768, 50257, 1024
    shapes: Shapes = [("wte", (vocab, width)), ("wpe", (context, width))]
    for block in range(12):
        prefix = f"h.{block}"
        shapes += _layer_norm(f"{prefix}.ln_1", width)
        shapes += _conv1d(f"{prefix}.attn.c_attn", width, 3 * width)
        shapes += _conv1d(f"{prefix}.attn.c_proj", width, width)
        shapes += _layer_norm(f"{prefix}.ln_2", width)
        shapes += _conv1d(f"{prefix}.mlp.c_fc", width, 4 * width)
        shapes += _conv1d(f"{prefix}.mlp.c_proj", 4 * width, width)
    shapes += _layer_norm("ln_f", width)
    return shapes


def _conv1d(prefix: str, fan_in: int, fan_out: int) -> Shapes:
    """GPT-2's projection layer: the weight stored (in, out), the transpose of torch's Linear."""
    return [(f"{prefix}.weight", (fan_in, fan_out)), (f"{prefix}.bias", (fan_out,))]


def resnet50_shapes() -> Shapes:
    """ResNet-50 (25.6M): 161 tensors.

    A 7x7 stem convolution, four stages of bottleneck blocks (3, 4, 6, 3 blocks; widths 64,
    128, 256, 512, expanded four times at each block's output), a 1000-class linear layer.
    Convolutions have no bias (each is followed by batch norm); each batch norm has a weight
    and a bias (its running statistics are buffers, not parameters); the first block of each
    stage has a 1x1 projection with its own batch norm on the shortcut.
    """
    shapes: Shapes = [("conv1.weight", (64, 3, 7, 7))]
    shapes += _batch_norm("bn1", 64)
    channels = 64
    for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=1):
        for block in range(blocks):
            prefix = f"layer{stage}.{block}"
            shapes.append((f"{prefix}.conv1.weight", (width, channels, 1, 1)))
            shapes += _batch_norm(f"{prefix}.bn1", width)
            shapes.append((f"{prefix}.conv2.weight", (width, width, 3, 3)))
            shapes += _batch_norm(f"{prefix}.bn2", width)
            shapes.append((f"{prefix}.conv3.weight", (4 * width, width, 1, 1)))
            shapes += _batch_norm(f"{prefix}.bn3", 4 * width)
            if block == 0:
                shapes.append((f"{prefix}.downsample.0.weight", (4 * width, channels, 1, 1)))
                shapes += _batch_norm(f"{prefix}.downsample.1", 4 * width)
            channels = 4 * width
    shapes += [("fc.weight", (1000, channels)), ("fc.bias", (1000,))]
    return shapes


def _batch_norm(prefix: str, channels: int) -> Shapes:
    return [(f"{prefix}.weight", (channels,)), (f"{prefix}.bias", (channels,))]


def bert_base_shapes() -> Shapes:
    """BERT-base, uncased (110M): 199 tensors.

    Word, position and token-type embeddings with their LayerNorm; 12 encoder layers (query,
    key, value and output projections, LayerNorm, intermediate and output feed-forward
    layers, LayerNorm); the pooler. Linear weights are (out, in), as torch stores them.
    """
    width, vocab, context, ffn = 768, 30522, 512, 3072
    shapes: Shapes = [
        ("embeddings.word_embeddings.weight", (vocab, width)),
        ("embeddings.position_embeddings.weight", (context, width)),
        ("embeddings.token_type_embeddings.weight", (2, width)),
        ("embeddings.LayerNorm.weight", (width,)),
        ("embeddings.LayerNorm.bias", (width,)),
    ]
    for layer in range(12):
        prefix = f"encoder.layer.{layer}"
        for name in ("query", "key", "value"):
            shapes += _linear(f"{prefix}.attention.self.{name}", width, width)
        shapes += _linear(f"{prefix}.attention.output.dense", width, width)
        shapes += _layer_norm(f"{prefix}.attention.output.LayerNorm", width)
        shapes += _linear(f"{prefix}.intermediate.dense", width, ffn)
        shapes += _linear(f"{prefix}.output.dense", ffn, width)
        shapes += _layer_norm(f"{prefix}.output.LayerNorm", width)
    shapes += _linear("pooler.dense", width, width)
    return shapes


def _linear(prefix: str, fan_in: int, fan_out: int) -> Shapes:
    return [(f"{prefix}.weight", (fan_out, fan_in)), (f"{prefix}.bias", (fan_out,))]


def _layer_norm(prefix: str, width: int) -> Shapes:
    return [(f"{prefix}.weight", (width,)), (f"{prefix}.bias", (width,))]


#: The whole models, by the name ``--models`` takes.
MODELS = {
    "gpt2-small": ("GPT-2 small shapes", gpt2_small_shapes),
    "resnet50": ("ResNet-50 shapes", resnet50_shapes),
    "bert-base": ("BERT-base shapes", bert_base_shapes),
}
