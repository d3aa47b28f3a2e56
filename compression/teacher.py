"""The embedded demo: synthetic benchmark + tokenizer + a Llama teacher trained from scratch.

``build_demo`` is what ``make demo`` runs. It is deliberately over-sized for the task (>= 10M
parameters) so that the compression pipeline has room to work. Each artefact is reused when it
already exists, so a second run costs seconds.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from compression import distributed
from compression.train import RankingObjective, TrainConfig, ranking_eval, train
from ranking.checkpoint import inspect_checkpoint, save_checkpoint
from ranking.datafolder import read_split, split_path
from ranking.dataset import encode_groups
from ranking.evaluation import evaluate_checkpoint
from ranking.fingerprint import content_hash
from ranking.synthetic import (
    GENERATOR_VERSION,
    BenchmarkConfig,
    benchmark_config,
    corpus,
    effect_attribution,
    read_meta,
    write_benchmark,
)
from ranking.task import RankingTask
from ranking.tokenizer import train_tokenizer


@dataclass
class ModelShape:
    """The demo teacher's shape: two wide-MLP layers (10.6M parameters): per step, the fastest
    of the 10M shapes measured here (0.8 s a step with AdamW against 1.0 s for six narrow
    layers of the same size; see docs/results.md)."""

    hidden_size: int = 384
    num_hidden_layers: int = 2
    num_attention_heads: int = 6
    num_key_value_heads: int = 2
    intermediate_size: int = 4096
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = True
    # Not a shape: each block's residual branch (attention o_proj, MLP down_proj) starts at
    # zero, so a fresh model is the identity plus embeddings and head.
    zero_init_residual: bool = True


@dataclass
class DemoConfig:
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    model: ModelShape = field(default_factory=ModelShape)
    # Sized for about 10 minutes on 2 CPU cores (about 0.93 s a step, Muon's Newton-Schulz
    # iterations and the validation passes included); see the learning curve it writes. Muon
    # learns the member x item terms that AdamW reaches only after several times the steps
    # (docs/results.md).
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=600,
            batch_queries=12,
            lr=1e-3,
            warmup_steps=50,
            lm_weight=0.5,
            eval_every=150,
            optimizer="muon",
            muon_lr_ratio=2.5,
        )
    )
    vocab_size: int = 1024
    # > 0: learn from labels mixed with the LightGBM baseline's out-of-fold probabilities
    # (train_teacher's ``baseline_weight``)
    baseline_weight: float = 0.0

    @classmethod
    def tiny(cls) -> DemoConfig:
        """Same code, test-sized: trains in seconds."""
        return cls(
            benchmark=BenchmarkConfig(train_queries=600, val_queries=40, test_queries=60),
            # head_dim 32: the smallest that vLLM's CPU attention supports
            model=ModelShape(
                hidden_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=1,
                intermediate_size=128,
                max_position_embeddings=1024,
                tie_word_embeddings=False,
                zero_init_residual=False,
            ),
            train=TrainConfig(steps=60, batch_queries=16, lr=3e-3, warmup_steps=10, eval_every=0),
            vocab_size=512,
        )

    @classmethod
    def movielens(cls) -> DemoConfig:
        """Six narrow layers (hidden 384, MLP 1152, 11.9M parameters) on MovieLens prompts
        (about 157 query tokens and 10 items of 12.5 tokens a query): the teacher of the
        MovieLens table in docs/results.md. Muon, as the demo teacher: on this data it reaches
        in 275 steps the validation AUC that AdamW reached in 825. Measured on 2 unshared cores
        with AMX: about 2.8 s a step on the plain prompt (51 minutes for the 1,100 steps); on an
        AVX2-only machine (fp32) 4.4 s a step with the popularity hint (81 minutes)."""
        return cls(
            model=ModelShape(
                num_hidden_layers=6,
                intermediate_size=1152,
                tie_word_embeddings=False,
                zero_init_residual=False,
            ),
            train=TrainConfig(
                steps=1100,
                batch_queries=12,
                lr=1e-3,
                warmup_steps=50,
                lm_weight=0.5,
                eval_every=275,
                optimizer="muon",
                muon_lr_ratio=2.5,
            ),
            vocab_size=2048,
        )


PRESETS = {"demo": DemoConfig, "tiny": DemoConfig.tiny, "movielens": DemoConfig.movielens}


def make_teacher_model(shape: ModelShape, tokenizer, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    dims = asdict(shape)
    zero_init_residual = dims.pop("zero_init_residual")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rope_theta=10000.0,
        **dims,
    )
    model = LlamaForCausalLM(config)
    if zero_init_residual:
        for layer in model.model.layers:
            torch.nn.init.zeros_(layer.self_attn.o_proj.weight)
            torch.nn.init.zeros_(layer.mlp.down_proj.weight)
    return model


def build_data(cfg: DemoConfig, data_dir: Path) -> dict:
    """Benchmark splits + tokenizer; reused if ``meta.json`` matches the config."""
    meta_path = data_dir / "meta.json"
    if meta_path.is_file() and _same_benchmark(read_meta(data_dir), cfg):
        return read_meta(data_dir)
    meta = write_benchmark(cfg.benchmark, data_dir)
    task = RankingTask()
    tok = train_tokenizer(
        corpus(read_split(data_dir, "train")),
        cfg.vocab_size,
        must_have=[task.yes, task.no, task.question],
    )
    tok.save_pretrained(data_dir / "tokenizer")
    return meta


def _same_benchmark(meta: dict, cfg: DemoConfig) -> bool:
    return meta.get("generator_version") == GENERATOR_VERSION and meta["config"] == asdict(
        cfg.benchmark
    )


def build_demo(out_dir: str | Path, cfg: DemoConfig | None = None, force: bool = False) -> dict:
    """Builds data and teacher under ``out_dir`` (``data/``, ``teacher/``); returns a summary."""
    cfg = cfg or DemoConfig()
    out = Path(out_dir)
    data_dir = out / "data"
    t0 = time.time()
    distributed.init()
    meta = distributed.on_main(lambda: build_data(cfg, data_dir))
    summary = train_teacher(
        data_dir, out / "teacher", cfg.model, cfg.train, key=_cfg_dict(cfg), force=force
    )
    if summary["reused"] or not distributed.is_main():
        return summary
    summary.update(
        total_seconds=round(time.time() - t0, 1),
        main_effects_auc_test=meta["splits"]["test"].get("main_effects_auc"),
    )
    (out / "teacher" / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    val = meta["splits"]["validation"]
    if summary["curve"]:
        plot_curve(summary["curve"], out / "teacher" / "learning_curve.png", val["bayes_auc"],
                   val.get("main_effects_auc"), summary.get("effects"))  # fmt: skip
    return summary


def gap_to_ceiling(data_dir: Path, test: dict, scores) -> dict:
    """How far the teacher is from the Bayes-optimal ranker, where the data knows the true
    probabilities: ``auc_gap`` on the sampled test labels (the true probabilities' AUC minus
    the teacher's, same labels), ``auc_gap_expected`` in expectation over labels (less noisy),
    and on the synthetic benchmark, which of the hidden logit's terms the teacher has learned
    (``ranking.synthetic.effect_attribution``). Empty for data without probabilities."""
    if "bayes_auc_sampled" not in test:
        return {}
    out = {
        "auc_gap": test["bayes_auc_sampled"] - test["auc"],
        "auc_gap_expected": test["bayes_auc"] - test["expected_auc"],
    }
    bench = benchmark_config(data_dir)
    if bench is not None:
        out["effects"] = effect_attribution(bench, "test", scores)
    return out


def train_teacher(
    data_dir: str | Path,
    teacher_dir: str | Path,
    shape: ModelShape,
    train_cfg: TrainConfig,
    key: dict | None = None,
    force: bool = False,
    baseline_weight: float = 0.0,
) -> dict:
    """Trains a Llama teacher from scratch on any data folder (the contract, with the
    ``tokenizer/`` its builder trained) and saves it to ``teacher_dir``; returns the summary
    (also ``training_summary.json``).

    ``baseline_weight`` w > 0: knowledge distillation from the tabular baseline. Each train
    row's target becomes ``(1 - w) * label + w * p``, p the LightGBM baseline's out-of-fold
    probability for it (``compression.baseline.train_predictions``): trees read counts and
    means that a small transformer trained from scratch learns slowly from text, and a soft
    target carries that reading to every row. Validation and test keep their labels.

    Reused when ``training_summary.json`` records the same ``key`` (default: the shape, the
    training settings and the content of the splits it trains on and of the tokenizer), so a
    rerun costs seconds and changed data retrains.
    """
    data_dir, teacher_dir = Path(data_dir), Path(teacher_dir)
    distributed.init()
    if not (data_dir / "tokenizer").is_dir():
        raise FileNotFoundError(
            f"no tokenizer/ in {data_dir}: run `python -m compression data tokenizer "
            f"{data_dir}` to train one"
        )
    if not 0.0 <= baseline_weight <= 1.0:
        raise ValueError(f"baseline_weight must be in [0, 1], got {baseline_weight}")
    if key is None:
        key = {
            "model": asdict(shape),
            "train": asdict(train_cfg),
            "data": {s: content_hash(split_path(data_dir, s)) for s in ("train", "validation")},
            "tokenizer": content_hash(data_dir / "tokenizer"),
        }
        if baseline_weight:
            key["baseline_weight"] = baseline_weight
        key = json.loads(json.dumps(key))
    summary_path = teacher_dir / "training_summary.json"
    if not force and summary_path.is_file():
        try:
            inspect_checkpoint(teacher_dir)
            summary = json.loads(summary_path.read_text())
            if summary.get("config") == key:
                if "effects" not in summary and benchmark_config(data_dir) is not None:
                    # a summary without the gap fields (an older slimrank wrote it): score once more
                    test, scores, _ = evaluate_checkpoint(teacher_dir, data_dir, "test")
                    summary.update(test=test, **gap_to_ceiling(data_dir, test, scores))
                    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
                summary["reused"] = True
                return summary
        except Exception:  # noqa: BLE001 - anything wrong with the old one: rebuild it
            pass

    from transformers import AutoTokenizer

    t0 = time.time()
    tokenizer = AutoTokenizer.from_pretrained(data_dir / "tokenizer")
    task = RankingTask()
    train_rows = read_split(data_dir, "train")
    distilled_from = None
    if baseline_weight:
        train_rows, distilled_from = _baseline_targets(data_dir, train_rows, baseline_weight)
    train_groups = encode_groups(train_rows, tokenizer, task)
    val_groups = encode_groups(read_split(data_dir, "validation"), tokenizer, task)
    model = make_teacher_model(shape, tokenizer, train_cfg.seed)
    params = sum(p.numel() for p in model.parameters())
    if distributed.is_main():
        print(
            f"[teacher] Llama {params / 1e6:.1f}M parameters, {len(train_groups)} training "
            f"queries, {train_cfg.steps} steps"
        )
    t_train = time.time()
    objective = RankingObjective(
        task.label_token_ids(tokenizer), tokenizer.pad_token_id or 0, lm_weight=train_cfg.lm_weight
    )
    evaluate_val = ranking_eval(tokenizer, task, val_groups)
    resume = distributed.on_main(lambda: _resume_folder(teacher_dir, key))
    curve = train(model, train_groups, train_cfg, objective, evaluate_val, desc="teacher",
                  resume=resume)  # fmt: skip
    train_seconds = time.time() - t_train

    def finish() -> dict:
        save_checkpoint(model, tokenizer, task, teacher_dir)
        # Evaluate the SAVED checkpoint (bf16), exactly as it will be served.
        test, scores, info = evaluate_checkpoint(teacher_dir, data_dir, "test", progress=True)
        summary = {
            "config": key,
            "params": params,
            "format": info.format,
            "train_seconds": round(train_seconds, 1),
            "total_seconds": round(time.time() - t0, 1),
            "test": test,
            **gap_to_ceiling(data_dir, test, scores),
            "curve": curve,
            "reused": False,
        }
        if distilled_from:
            summary["baseline_targets"] = distilled_from
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")
        if curve:
            plot_curve(curve, teacher_dir / "learning_curve.png")
        shutil.rmtree(resume, ignore_errors=True)
        return summary

    return distributed.on_main(finish)


def _baseline_targets(data_dir: Path, rows: list[dict], weight: float) -> tuple[list[dict], dict]:
    """The train rows with ``(1 - weight) * label + weight * p`` as their label, p the
    baseline's out-of-fold probability (``train_teacher``), and how p was made."""
    from compression.baseline import train_predictions

    if distributed.is_main():
        print(f"[teacher] targets: {1 - weight:g} x label + {weight:g} x LightGBM out of fold")
    p, info = train_predictions(data_dir)
    if distributed.is_main():
        auc = info.get("train_auc_out_of_fold")
        print(f"[teacher]   {info['folds']} folds in {info['seconds']:.0f}s"
              + (f", train AUC out of fold {auc:.4f}" if auc is not None else ""))  # fmt: skip
    mixed = [
        {**r, "label": (1 - weight) * float(r["label"]) + weight * float(q)}
        for r, q in zip(rows, p, strict=True)
    ]
    return mixed, {"weight": weight, **info}


def _resume_folder(teacher_dir: Path, key: dict) -> Path:
    """Where a killed training run of this teacher left its state (``<teacher>.resume``),
    emptied unless that run had the same ``key``."""
    folder = teacher_dir.with_name(teacher_dir.name + ".resume")
    stamp = folder / "key.json"
    wanted = json.dumps(key, sort_keys=True)
    if folder.exists() and not (stamp.is_file() and stamp.read_text() == wanted):
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stamp.write_text(wanted)
    return folder


def _cfg_dict(cfg: DemoConfig) -> dict:
    return json.loads(json.dumps(asdict(cfg)))


def plot_curve(
    curve: list[dict],
    path: Path,
    bayes: float | None = None,
    oracle: float | None = None,
    effects: dict | None = None,
) -> None:
    """Validation AUC and losses along training; with ``effects`` (the synthetic benchmark's
    ``effect_attribution``) a third panel shows how much of each hidden term was learned."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3 if effects else 2, figsize=(15 if effects else 10, 4))
    steps = [c["step"] for c in curve]
    ax[0].plot(steps, [c["val_auc"] for c in curve], marker="o", label="validation AUC")
    if bayes is not None:
        ax[0].axhline(bayes, color="gray", linestyle="--", label=f"Bayes-optimal {bayes:.3f}")
    if oracle is not None:
        ax[0].axhline(
            oracle, color="gray", linestyle=":", label=f"non-personalised oracle {oracle:.3f}"
        )
    ax[0].set_xlabel("step")
    ax[0].set_ylabel("AUC")
    ax[0].legend()
    ax[1].plot(steps, [c["train_loss"] for c in curve], marker="o", label="train loss (EMA)")
    ax[1].plot(steps, [c["val_logloss"] for c in curve], marker="o", label="validation log loss")
    ax[1].set_xlabel("step")
    ax[1].legend()
    if effects:
        names = list(effects)
        bars = ax[2].bar(names, [effects[n]["weight"] for n in names])
        for bar, n in zip(bars, names, strict=True):
            ax[2].annotate(f"worth {effects[n]['worth']:.3f}", (bar.get_x(), bar.get_height()),
                           fontsize=8, xytext=(0, 3), textcoords="offset points")  # fmt: skip
        ax[2].axhline(1.0, color="gray", linestyle="--", label="as in the truth")
        ax[2].set_ylabel("learned weight (test)")
        ax[2].set_title("hidden terms learned\n(worth: the AUC the Bayes ranker loses without it)",
                        fontsize=9)  # fmt: skip
        ax[2].legend()
    fig.suptitle("teacher learning curve")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
