"""What every stage type provides: its settings, what it makes of its input, and how it runs.

A stage type is stateless; one instance sits in the registry (``compression.stages.STAGES``).
The recipe parses each stage's YAML mapping with ``parse``, checks the whole chain with
``check`` before anything runs (so a bad width fails in seconds, not after an hour of
distillation), and the pipeline calls ``run``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar


@dataclass(frozen=True)
class StageContext:
    """What a running stage needs from its recipe (not the recipe itself)."""

    name: str  # the stage's name: progress bars and logs
    config: Any  # the stage's parsed settings (an instance of its type's ``Config``)
    teacher: Path  # the recipe's teacher checkpoint (distillation targets)
    data: Path  # the benchmark folder (train / validation / test splits)
    # Survives a killed run of this stage with unchanged settings (resumable training state);
    # removed once the stage has finished. None: nothing to resume from.
    work: Path | None = None
    # The folders of the other stages this one reads (``StageType.reads``), by stage name.
    inputs: dict[str, Path] = field(default_factory=dict)


class StageType:
    """Base of the stage types. Subclasses set ``Config`` (a dataclass: the YAML keys a stage
    accepts) and implement ``run``; ``check`` and ``report_metrics`` have defaults."""

    Config: ClassVar[type]
    # The data splits ``run`` reads: the stage's fingerprint keys on their content, so new data
    # reruns the stages that read it (and their downstream) and nothing else.
    data_splits: ClassVar[tuple[str, ...]] = ("train", "validation")
    # Whether every ``torchrun`` process runs this stage (data-parallel training, rank 0
    # writing); otherwise rank 0 runs it alone while the others wait.
    data_parallel: ClassVar[bool] = False
    # Whether ``run`` keeps resumable training state in ``ctx.work`` (see the pipeline).
    resumable: ClassVar[bool] = False
    # Whether the report scores this stage's output as a ranker (a checkpoint); otherwise it
    # shows ``report_metrics`` of its summary.
    scored: ClassVar[bool] = True

    def parse(self, spec: dict) -> Any:
        """The settings from a stage's YAML mapping; ``ValueError`` names an unknown key or a
        bad value. Checks that need the input checkpoint wait for ``check``."""
        allowed = {f.name for f in dataclasses.fields(self.Config)}
        unknown = sorted(set(spec) - allowed)
        if unknown:
            raise ValueError(f"unknown key(s) {unknown}; allowed: {', '.join(sorted(allowed))}")
        try:
            cfg = self.Config(**spec)
        except TypeError as exc:
            raise ValueError(str(exc)) from exc
        if hasattr(cfg, "validate"):
            cfg.validate()
        return cfg

    def reads(self, cfg: Any) -> dict[str, str]:
        """Other stages (besides ``from``) whose output this one reads: {stage name: the stage
        type it must have}. The recipe checks they come earlier, and the fingerprint covers
        them. Default: none."""
        return {}

    def check(self, cfg: Any, config: Any) -> Any:
        """The Hugging Face config of the checkpoint this stage will write, given its input's
        (computed from configs alone: nothing is loaded or trained). ``ValueError`` or
        ``OSError`` if the stage cannot run on that input. Default: the same architecture."""
        return config

    def run(self, ctx: StageContext, src: Path, dst: Path) -> dict:
        """Reads the checkpoint ``src``, writes ``dst``; returns the stage's summary (JSON)."""
        raise NotImplementedError

    def report_metrics(self, summary: dict) -> dict | None:
        """What the report shows for a stage whose output the ranking scorer does not score
        (taken from its summary); ``None``: the report scores the checkpoint as a ranker."""
        return None
