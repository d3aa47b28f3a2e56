"""Where a checkpoint's bytes go: embeddings, attention, MLP, norms, LM head, other.

Read from the safetensors headers alone (each tensor's byte range), so a checkpoint of any
size is measured without loading a weight. The parts sum to ``checkpoint_bytes``: the headers
themselves (tensor names, shapes, metadata) count as ``other``. Quantized tensors (packed
weights, scales, zero points, shapes) count with the layer they belong to.

``projected_bytes`` computes the same breakdown from a Llama config alone (parameter counts
times bytes per parameter), to size a recipe change before training anything: after a
bf16 embedding table, a shrinking quantized body leaves the tables as the floor.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

PARTS = ("embeddings", "attention", "mlp", "norms", "lm_head", "other")


def part_of(name: str) -> str:
    """The part a tensor of a Llama-family checkpoint belongs to, by its name."""
    if name.startswith("lm_head."):
        return "lm_head"
    if "embed_tokens." in name:
        return "embeddings"
    if "norm." in name:  # input/post-attention layernorms, the final norm, q/k norms
        return "norms"
    if ".self_attn." in name:
        return "attention"
    if ".mlp." in name:
        return "mlp"
    return "other"


def safetensors_header(path: str | Path) -> tuple[int, dict]:
    """(header bytes including its 8-byte length, the header's JSON) of one safetensors file."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return 8 + length, json.loads(f.read(length))


def bytes_by_part(ckpt: str | Path) -> dict[str, int]:
    """Bytes of a checkpoint's safetensors files by part (``PARTS``); the values sum to the
    files' sizes. An LM head tied to the embeddings has no tensor of its own: 0 bytes."""
    files = sorted(Path(ckpt).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{ckpt} has no .safetensors files")
    out = dict.fromkeys(PARTS, 0)
    for f in files:
        header_bytes, header = safetensors_header(f)
        out["other"] += header_bytes
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            start, end = entry["data_offsets"]
            out[part_of(name)] += end - start
    return out


def head_is_tied(ckpt: str | Path) -> bool:
    """The LM head reuses the input embedding table (``tie_word_embeddings``)."""
    config = json.loads((Path(ckpt) / "config.json").read_text())
    return bool(config.get("tie_word_embeddings", False))


def _linears(config: dict) -> dict[str, list[tuple[int, int]]]:
    """(out, in) shapes of one decoder layer's linear layers, by part."""
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    hd = config.get("head_dim") or hidden // heads
    return {
        "attention": [
            (heads * hd, hidden),
            (kv * hd, hidden),
            (kv * hd, hidden),
            (hidden, heads * hd),
        ],
        "mlp": [(inter, hidden), (inter, hidden), (hidden, inter)],
    }


def _linear_bytes(rows: int, cols: int, weights: str, group_size: int | None) -> int:
    """Bytes of one linear layer's tensors as llmcompressor writes them (bf16 scales)."""
    if weights == "bf16":
        return 2 * rows * cols
    if weights == "int8":  # int8 weights, one scale per output channel
        return rows * cols + 2 * rows
    if weights == "int4":  # int32-packed nibbles, scales per group or channel, int64 shape
        scales = rows * (cols // group_size if group_size else 1)
        return 4 * rows * -(-cols // 8) + 2 * scales + 16
    raise ValueError(f"unknown weight format {weights!r}; choose bf16, int8 or int4")


def projected_bytes(
    config: dict, weights: str = "bf16", group_size: int | None = None
) -> dict[str, int]:
    """Tensor bytes by part (``PARTS``, ``other`` 0: headers are not projected) of a Llama
    checkpoint with this config (a ``config.json`` mapping) whose decoder linears are stored
    as ``weights`` (bf16, int8 per channel, int4 per group of ``group_size`` or per channel);
    embeddings, norms and an untied LM head stay bf16, as the quantize stage leaves them."""
    layers, hidden, vocab = config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]
    out = dict.fromkeys(PARTS, 0)
    for part, shapes in _linears(config).items():
        out[part] = layers * sum(_linear_bytes(r, c, weights, group_size) for r, c in shapes)
    out["embeddings"] = 2 * vocab * hidden
    out["lm_head"] = 0 if config.get("tie_word_embeddings") else 2 * vocab * hidden
    out["norms"] = 2 * hidden * (2 * layers + 1)
    return out


def rows(checkpoints: list[tuple[str, Path]]) -> list[dict]:
    """``{"name", "bytes_by_part", "lm_head_tied"}`` for each (name, checkpoint folder): the
    report's per-part breakdown (``report.json`` holds these rows, ``markdown`` the table)."""
    return [
        {"name": name, "bytes_by_part": bytes_by_part(path), "lm_head_tied": head_is_tied(path)}
        for name, path in checkpoints
    ]


def markdown(entries: list[dict]) -> str:
    """The report's table of ``entries`` (from ``rows``): MB and share of the total per part."""
    lines = [
        "",
        "## Bytes per part",
        "",
        "| stage | " + " | ".join(PARTS) + " | total |",
        "| --- |" + " --- |" * (len(PARTS) + 1),
    ]
    for r in entries:
        parts, total = r["bytes_by_part"], sum(r["bytes_by_part"].values())
        cells = [
            f"{parts[p] / 1e6:.3f} MB ({parts[p] / total:.0%})"
            + (" tied" if p == "lm_head" and r.get("lm_head_tied") else "")
            for p in PARTS
        ]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + f" | {total / 1e6:.3f} MB |")
    return "\n".join(lines) + "\n"
