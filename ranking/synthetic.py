"""The embedded demo benchmark: synthetic members, items and engagement, deterministic from a seed.

A hidden model gives each (member, item) pair a true engagement probability
``p = sigmoid(z)`` with

    z = bias + quality(item) + popularity(topic) + format_bias(format)      (main effects)
        + interest(member, topic) + format match + level match            (matches)
        + role . topic  (a latent-factor term: role and topic embeddings, rank ``LATENT_DIM``)

Every input of ``z`` is written in the text (the member's role, ranked interests, preferred
format and level; the item's topic, format, level and quality), so a model can learn it; labels
are Bernoulli(p). Because p is known, each split reports its Bayes-optimal AUC: ranking by the
true p, the ceiling no model can pass.

Why these effects: a pure attribute-match signal is slow to learn for a small transformer in a
CPU budget; main effects (quality, format) are learned in the first minutes, the match and latent
terms after. Candidates mix the member's interests with random topics, as a retrieval stage would.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ranking.atomic import atomic_file
from ranking.metrics import expected_auc

TOPICS = [
    "music", "travel", "cooking", "fitness", "finance", "gaming", "science", "fashion",
    "photography", "history", "gardening", "movies", "startups", "parenting", "design", "astronomy",
]  # fmt: skip
TOPIC_WORDS = {
    "music": ["jazz", "guitar", "piano", "album", "concert", "rhythm"],
    "travel": ["island", "journey", "passport", "coast", "backpacking", "city"],
    "cooking": ["recipe", "kitchen", "bread", "spices", "pasta", "baking"],
    "fitness": ["workout", "running", "strength", "yoga", "cardio", "marathon"],
    "finance": ["budget", "investing", "savings", "stocks", "retirement", "taxes"],
    "gaming": ["console", "strategy", "arcade", "multiplayer", "speedrun", "quest"],
    "science": ["physics", "biology", "chemistry", "experiment", "lab", "discovery"],
    "fashion": ["style", "wardrobe", "runway", "denim", "vintage", "outfit"],
    "photography": ["camera", "lens", "portrait", "exposure", "landscape", "film"],
    "history": ["empire", "ancient", "war", "archive", "medieval", "revolution"],
    "gardening": ["seeds", "roses", "soil", "compost", "orchard", "herbs"],
    "movies": ["cinema", "director", "thriller", "comedy", "screenplay", "premiere"],
    "startups": ["founders", "funding", "pitch", "growth", "product", "venture"],
    "parenting": ["toddler", "bedtime", "school", "family", "teens", "play"],
    "design": ["typography", "layout", "color", "sketch", "interface", "branding"],
    "astronomy": ["telescope", "galaxy", "planets", "comet", "nebula", "orbit"],
}
FORMATS = ["video", "article", "podcast", "course"]
FORMAT_BIAS = {"video": 0.4, "article": 0.0, "podcast": -0.2, "course": -0.4}
LEVELS = ["beginner", "intermediate", "expert"]
QUALITY = {"excellent": 1.6, "good": 0.6, "mediocre": -0.6, "poor": -1.6}
ROLES = ["student", "engineer", "teacher", "nurse", "artist", "manager", "retiree", "founder"]
INTEREST_WEIGHTS = (1.3, 1.0, 0.7)  # first, second, third listed interest
LATENT_DIM = 3
GENERATOR_VERSION = 3
# the terms of the hidden logit, item-only first (see ``World.effects``)
EFFECTS = ("main", "interest", "format", "level", "latent")


@dataclass(frozen=True)
class BenchmarkConfig:
    seed: int = 0
    train_queries: int = 16000
    val_queries: int = 500
    test_queries: int = 1000
    items_per_query: int = 16
    eval_items_per_query: int = 10
    history_len: int = 3
    bias: float = -1.0
    format_weight: float = 0.6
    level_weight: float = 0.35
    latent_weight: float = 0.45
    popularity_weight: float = 1.0
    interest_share: float = 0.5  # share of candidates drawn from the member's interests


@dataclass(frozen=True)
class Member:
    role: str
    level: str
    interests: tuple[str, ...]
    fmt: str
    history: tuple[str, ...]


@dataclass(frozen=True)
class Item:
    topic: str
    fmt: str
    level: str
    quality: str
    title: str


class World:
    """The hidden model: fixed latent embeddings of roles and topics, drawn from the seed."""

    def __init__(self, cfg: BenchmarkConfig):
        self.cfg = cfg
        rng = np.random.default_rng([cfg.seed, 7919])
        self.role_vec = {r: rng.normal(size=LATENT_DIM) for r in ROLES}
        self.topic_vec = {t: rng.normal(size=LATENT_DIM) for t in TOPICS}
        self.popularity = {t: float(rng.normal()) for t in TOPICS}

    # ---- sampling --------------------------------------------------------------------------
    def member(self, rng: np.random.Generator, history_len: int | None = None) -> Member:
        interests = tuple(rng.choice(TOPICS, size=3, replace=False))
        n_hist = self.cfg.history_len if history_len is None else history_len
        history = tuple(
            self.item(rng, topic=interests[rng.integers(3)] if rng.random() < 0.8 else None).title
            for _ in range(n_hist)
        )
        return Member(
            role=str(rng.choice(ROLES)),
            level=str(rng.choice(LEVELS)),
            interests=tuple(str(t) for t in interests),
            fmt=str(rng.choice(FORMATS)),
            history=history,
        )

    def item(self, rng: np.random.Generator, topic: str | None = None) -> Item:
        topic = str(topic or rng.choice(TOPICS))
        words = list(rng.choice(TOPIC_WORDS[topic], size=2, replace=False))
        title = f"{words[0]} {words[1]}"
        return Item(
            topic=topic,
            fmt=str(rng.choice(FORMATS)),
            level=str(rng.choice(LEVELS)),
            quality=str(rng.choice(list(QUALITY))),
            title=title,
        )

    def candidates(self, rng: np.random.Generator, m: Member, n: int) -> list[Item]:
        return [
            self.item(
                rng,
                topic=str(rng.choice(m.interests))
                if rng.random() < self.cfg.interest_share
                else None,
            )
            for _ in range(n)
        ]

    # ---- the hidden truth -----------------------------------------------------------------
    def main_effects(self, it: Item) -> float:
        """The item-only part of the logit: what a ranker that ignores the member can know."""
        return (
            QUALITY[it.quality]
            + FORMAT_BIAS[it.fmt]
            + self.cfg.popularity_weight * self.popularity[it.topic]
        )

    def effects(self, m: Member, it: Item) -> dict[str, float]:
        """The logit's terms one by one (``EFFECTS``): ``logit = bias + sum(effects)``."""
        c = self.cfg
        gap = abs(LEVELS.index(it.level) - LEVELS.index(m.level))
        role_topic = float(self.role_vec[m.role] @ self.topic_vec[it.topic])
        return {
            "main": self.main_effects(it),
            "interest": (
                INTEREST_WEIGHTS[m.interests.index(it.topic)] if it.topic in m.interests else 0.0
            ),
            "format": c.format_weight * (1.0 if it.fmt == m.fmt else -0.25),
            "level": c.level_weight * (1.0 - gap),
            "latent": c.latent_weight * role_topic / math.sqrt(LATENT_DIM),
        }

    def logit(self, m: Member, it: Item) -> float:
        return self.cfg.bias + sum(self.effects(m, it).values())

    def probability(self, m: Member, it: Item) -> float:
        return 1.0 / (1.0 + math.exp(-self.logit(m, it)))


# ---- text ------------------------------------------------------------------------------------
def render_member(m: Member) -> str:
    hist = "; ".join(m.history)
    return (
        f"member profile: {m.role}, {m.level} level. interests: {', '.join(m.interests)}. "
        f"prefers {m.fmt} content. recently engaged with: {hist}."
    )


def render_item(it: Item, tags: tuple[str, ...] = ()) -> str:
    """``tags`` only lengthen the text (the benchmark workload uses them); they carry no signal
    beyond the topic, which the text already names."""
    text = f"{it.title}: {it.quality} {it.level} {it.topic} {it.fmt}."
    return f"{text} tags: {' '.join(tags)}." if tags else text


# ---- splits ------------------------------------------------------------------------------------
SPLITS = ("train", "validation", "test")


def _split_pairs(world: World, split: str, n_queries: int, n_items: int):
    """(query index, member, item, true p, label) in the split's order; replayable from the
    seed."""
    rng = np.random.default_rng([world.cfg.seed, SPLITS.index(split) + 1])
    for q in range(n_queries):
        m = world.member(rng)
        for it in world.candidates(rng, m, n_items):
            p = world.probability(m, it)
            yield q, m, it, p, int(rng.random() < p)


def _split_rows(world: World, split: str, n_queries: int, n_items: int) -> list[dict]:
    rows, item_id, last_q = [], 0, -1
    for q, m, it, p, label in _split_pairs(world, split, n_queries, n_items):
        item_id = item_id + 1 if q == last_q else 0
        last_q = q
        rows.append(
            {
                "query_id": f"{split}-{q}",
                "query": render_member(m),
                "item_id": item_id,
                "item": render_item(it),
                "label": label,
                "p": round(p, 6),
                "z_main": round(world.main_effects(it), 6),
            }
        )
    return rows


def _split_sizes(cfg: BenchmarkConfig) -> dict[str, tuple[int, int]]:
    return {
        "train": (cfg.train_queries, cfg.items_per_query),
        "validation": (cfg.val_queries, cfg.eval_items_per_query),
        "test": (cfg.test_queries, cfg.eval_items_per_query),
    }


def generate(cfg: BenchmarkConfig) -> dict[str, list[dict]]:
    world = World(cfg)
    return {s: _split_rows(world, s, *size) for s, size in _split_sizes(cfg).items()}


def bayes_auc(rows: list[dict]) -> float:
    """Expected AUC of ranking by the true probability (labels ~ Bernoulli(p))."""
    p = np.array([r["p"] for r in rows])
    return expected_auc(p, p)


def split_effects(cfg: BenchmarkConfig, split: str) -> np.ndarray:
    """The logit's terms (columns in ``EFFECTS`` order) for every row of ``split``, in the
    order ``write_benchmark`` writes them: replayed from the seed, not read from the files."""
    world = World(cfg)
    pairs = _split_pairs(world, split, *_split_sizes(cfg)[split])
    effects = (world.effects(m, it) for _, m, it, _, _ in pairs)
    return np.array([[e[k] for k in EFFECTS] for e in effects])


def effect_attribution(cfg: BenchmarkConfig, split: str, scores: np.ndarray) -> dict:
    """Which of the hidden logit's terms a scorer has learned, and what each is worth.

    ``weight``: the term's coefficient when the scorer's logit is regressed on all terms
    (1: learned as strongly as the truth has it; 0: ignored). ``worth``: the expected AUC the
    Bayes-optimal ranker loses without the term, so a term with weight 0 and a large worth is
    where a scorer's gap to the ceiling is.
    """
    x = split_effects(cfg, split)
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) != len(x):
        raise ValueError(f"{len(scores)} scores for the {len(x)} rows of the {split} split")
    s = np.clip(scores, 1e-6, 1 - 1e-6)
    design = np.c_[x, np.ones(len(x))]
    coef, *_ = np.linalg.lstsq(design, np.log(s / (1 - s)), rcond=None)
    z = cfg.bias + x.sum(axis=1)
    p = 1 / (1 + np.exp(-z))
    ceiling = expected_auc(p, p)
    return {
        name: {
            "weight": float(coef[i]),
            "worth": float(ceiling - expected_auc(p, z - x[:, i])),
        }
        for i, name in enumerate(EFFECTS)
    }


def write_benchmark(cfg: BenchmarkConfig, out_dir: str | Path) -> dict:
    """Writes ``{split}.jsonl`` and ``meta.json`` (config, sizes, Bayes AUC per split)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    splits = generate(cfg)
    meta = {"generator_version": GENERATOR_VERSION, "config": asdict(cfg), "splits": {}}
    for name, rows in splits.items():
        with atomic_file(out / f"{name}.jsonl") as tmp, tmp.open("w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        labels = np.array([r["label"] for r in rows])
        meta["splits"][name] = {
            "rows": len(rows),
            "queries": len({r["query_id"] for r in rows}),
            "positive_rate": float(labels.mean()),
            "bayes_auc": bayes_auc(rows),
            # a ranker that knows the item main effects exactly but ignores the member
            "main_effects_auc": expected_auc([r["p"] for r in rows], [r["z_main"] for r in rows]),
        }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def read_meta(data_dir: str | Path) -> dict:
    return json.loads((Path(data_dir) / "meta.json").read_text())


def benchmark_config(data_dir: str | Path) -> BenchmarkConfig | None:
    """The config that generated ``data_dir`` if it is this generator's benchmark, else None
    (another data folder, or one written by another generator version)."""
    path = Path(data_dir) / "meta.json"
    if not path.is_file():
        return None
    meta = json.loads(path.read_text())
    if meta.get("generator_version") != GENERATOR_VERSION:
        return None
    return BenchmarkConfig(**meta["config"])


def corpus(rows: list[dict]) -> list[str]:
    """Text for training the tokenizer: unique queries and items."""
    return sorted({r["query"] for r in rows}) + sorted({r["item"] for r in rows})


def standard_workload(
    cfg: BenchmarkConfig,
    tokenizer,
    task,
    query_tokens: int = 250,
    n_items: int = 50,
    seed: int = 12345,
    topic: str | None = None,
) -> tuple[str, list[str]]:
    """One benchmark request: a member whose history is grown until the query is at least
    ``query_tokens`` tokens, and ``n_items`` candidates (~30 tokens each with the question).
    With ``topic`` every candidate is of that topic: another item population than the data's
    (score drift demonstrations)."""
    world = World(cfg)
    rng = np.random.default_rng(seed)
    base = world.member(rng, history_len=0)
    history: list[str] = []
    while True:
        m = Member(base.role, base.level, base.interests, base.fmt, tuple(history))
        query = render_member(m)
        if len(task.encode_query(tokenizer, query)) >= query_tokens:
            break
        history.append(world.item(rng, topic=str(rng.choice(base.interests))).title)
    items = [
        render_item(it, tags=tuple(rng.choice(TOPIC_WORDS[it.topic], size=12, replace=True)))
        for it in (
            world.candidates(rng, base, n_items)
            if topic is None
            else [world.item(rng, topic=topic) for _ in range(n_items)]
        )
    ]
    return query, items
