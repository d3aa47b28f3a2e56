"""Training losses: hard labels, and white-box knowledge distillation (KD) from a teacher.

All KD terms are *forward* KL, KL(teacher || student): the student is pushed to cover every
outcome the teacher gives mass to (the choice of the published recipe for ranking students).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hard_label_loss(
    model, hidden: torch.Tensor, labels: torch.Tensor, label_ids: tuple[int, int]
) -> torch.Tensor:
    """Cross-entropy of the full next-token distribution against the " yes"/" no" token.

    Full vocabulary, not just the two labels: the label tokens then also dominate the model's
    next-token distribution, which engines that read log-probabilities rely on.
    """
    logits = model.get_output_embeddings()(hidden).float()
    target = torch.where(labels > 0.5, label_ids[0], label_ids[1])
    return F.cross_entropy(logits, target)


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
    for _ids, mask, hidden in taps:
        valid = (mask[:, 1:] > 0) & (mask[:, :-1] > 0)
        out.append(head(hidden[:, :-1][valid]).float())
    return out


def tap_targets(taps: list) -> list[torch.Tensor]:
    """The next token at every position that ``tap_logits`` returns, in the same order."""
    out = []
    for ids, mask, _hidden in taps:
        valid = (mask[:, 1:] > 0) & (mask[:, :-1] > 0)
        out.append(ids[:, 1:][valid])
    return out


def lm_loss(model, taps: list) -> torch.Tensor:
    """Next-token cross-entropy over all prompt tokens (queries and items).

    Why: the answer position gives one noisy bit per item; predicting the prompt's own tokens
    gives dense gradient and builds the circuits the ranking needs (e.g. a member's history is
    drawn from their interests, so predicting it teaches attention from items to interests).
    """
    logits = torch.cat(tap_logits(model, taps))
    return F.cross_entropy(logits, torch.cat(tap_targets(taps)))
