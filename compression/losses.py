"""Training losses: hard labels, and white-box knowledge distillation (KD) from a teacher.

All KD terms are *forward* KL, KL(teacher || student): the student is pushed to cover every
outcome the teacher gives mass to (the choice of the published recipe for ranking students).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def label_loss(
    model, hidden: torch.Tensor, labels: torch.Tensor, label_ids: tuple[int, int]
) -> torch.Tensor:
    """Cross-entropy of the full next-token distribution against the " yes"/" no" token,
    weighted by the label: ``label * CE(yes) + (1 - label) * CE(no)``, so a 0/1 label is the
    usual hard-label loss and a soft label in [0, 1] (the data contract allows them; a
    teacher's targets mixed with a baseline's, ``compression.teacher``) is trained as given.

    Full vocabulary, not just the two labels: the label tokens then also dominate the model's
    next-token distribution, which engines that read log-probabilities rely on.
    """
    logp = F.log_softmax(model.get_output_embeddings()(hidden).float(), dim=-1)
    y = labels.to(device=logp.device, dtype=logp.dtype)
    return -(y * logp[:, label_ids[0]] + (1 - y) * logp[:, label_ids[1]]).mean()


def answer_kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """KL(p_teacher || p_student) of the answer distribution, softened by ``temperature``.

    Logits are (n, k) over the answer labels (k = 2 for yes/no: exactly the distribution whose
    first entry is the served score). Multiplied by T^2 so the gradient scale does not shrink
    as T grows (Hinton et al., 2015). Mean over the n answers.
    """
    t = float(temperature)
    log_p_s = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1)
    return kl.mean() * t * t


def token_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Token-level forward KL over the whole vocabulary: (n_tokens, vocab) logits each, mean
    over tokens. The white-box signal for generative targets (every position is a target)."""
    return answer_kd_loss(student_logits, teacher_logits, temperature)


def tap_logits(model, taps: list) -> list[torch.Tensor]:
    """Next-token logits at every valid (non-padding, non-last) position of each tapped forward,
    flattened in a fixed order, so student and teacher logits line up row for row."""
    head = model.get_output_embeddings()
    out = []
    for _ids, mask, hidden, _items in taps:
        valid = (mask[:, 1:] > 0) & (mask[:, :-1] > 0)
        out.append(head(hidden[:, :-1][valid]).float())
    return out


def tap_targets(taps: list) -> list[torch.Tensor]:
    """The next token at every position that ``tap_logits`` returns, in the same order."""
    out = []
    for ids, mask, _hidden, _items in taps:
        valid = (mask[:, 1:] > 0) & (mask[:, :-1] > 0)
        out.append(ids[:, 1:][valid])
    return out


def tap_segments(taps: list, item_counts: list[int]) -> list[tuple[int, int]]:
    """The (request, item) of each block of rows that ``tap_logits`` returns, in its order:
    item -1 for a query's own rows (``len(query) - 1`` of them), else ``len(item) - 1`` rows.
    ``item_counts``: the number of items of each request of the forward."""
    flat = [(r, j) for r, n in enumerate(item_counts) for j in range(n)]
    out: list[tuple[int, int]] = []
    for _ids, _mask, _hidden, items in taps:
        out.extend([(r, -1) for r in range(len(item_counts))] if items is None
                   else [flat[i] for i in items])  # fmt: skip
    return out


def topk_kd_loss(
    student_logits: torch.Tensor, top_ids: torch.Tensor, top_logprobs: torch.Tensor
) -> torch.Tensor:
    """Forward KL to a teacher known only by its top-k next-token log-probs, per row.

    The teacher's distribution is its k tokens plus one "tail" outcome holding the rest of its
    mass (1 - sum of the k probabilities); the student's is the same k tokens (from its full
    log-softmax) plus its own tail. KL over these k + 1 outcomes is exact when k is the whole
    vocabulary and a lower bound of the full KL otherwise (merging outcomes never raises KL), so
    the student matches the teacher's head and the total mass it leaves to the rest. Mean over
    rows, as ``token_kd_loss``.
    """
    log_q = F.log_softmax(student_logits.float(), dim=-1).gather(1, top_ids.long())
    log_p = top_logprobs.float()
    p = log_p.exp()
    tail_p = (1 - p.sum(dim=-1)).clamp_min(0)
    tail_q = (1 - log_q.exp().sum(dim=-1)).clamp_min(1e-12)
    kl = (p * (log_p - log_q)).sum(dim=-1)
    kl = kl + torch.where(tail_p > 1e-9, tail_p * (tail_p.clamp_min(1e-12).log() - tail_q.log()), 0)
    return kl.mean()


def lm_loss(model, taps: list) -> torch.Tensor:
    """Next-token cross-entropy over all prompt tokens (queries and items).

    Why: the answer position gives one noisy bit per item; predicting the prompt's own tokens
    gives dense gradient and builds the circuits the ranking needs (e.g. a member's history is
    drawn from their interests, so predicting it teaches attention from items to interests).
    """
    logits = torch.cat(tap_logits(model, taps))
    return F.cross_entropy(logits, torch.cat(tap_targets(taps)))
