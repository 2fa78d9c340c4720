"""The training objectives as pure functions: tensors in, ``(loss, metrics)`` out.

Sequence log-probs are SUMS over the response tokens (DESIGN.md section 1). Keys of the CLO dicts
are ``<prompt lang>_<response lang>``: ``en_en``, ``en_tgt``, ``tgt_tgt``, ``tgt_en``.
Metrics are detached scalar tensors, so callers may average them across micro-batches or ranks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

KEYS = ("en_en", "en_tgt", "tgt_tgt", "tgt_en")


def sft_nll(sum_logps: torch.Tensor, n_tokens: torch.Tensor | float) -> tuple[torch.Tensor, dict]:
    """Token-mean negative log-likelihood.

    .. math::  L_{SFT} = -\\frac{\\sum_i \\log \\pi(y_i | x_i)}{\\sum_i |y_i|}

    Args:
        sum_logps: summed response log-probs, shape ``[n]`` (any shape; all entries summed).
        n_tokens: the token count to normalise by: a tensor of per-sequence counts (summed) or a
            number. Passing the count of a whole global batch lets a micro-batch contribute its
            exact share of the global token mean.
    """
    denom = n_tokens.sum() if isinstance(n_tokens, torch.Tensor) else torch.tensor(float(n_tokens))
    if float(denom) <= 0:
        raise ValueError("sft_nll: no response tokens to average over")
    loss = -sum_logps.sum() / denom.to(sum_logps)
    return loss, {"nll": loss.detach()}


def dpo_loss(
    chosen_policy: torch.Tensor,
    rejected_policy: torch.Tensor,
    chosen_ref: torch.Tensor,
    rejected_ref: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, dict]:
    """Sigmoid DPO loss (Rafailov et al. 2023), mean over the batch.

    .. math::
        z = \\beta\\,[(\\log\\pi_\\theta(y_w|x) - \\log\\pi_{ref}(y_w|x))
                     - (\\log\\pi_\\theta(y_l|x) - \\log\\pi_{ref}(y_l|x))],\\qquad
        L = \\operatorname{mean}(-\\log\\sigma(z))

    Metrics: ``loss``, ``reward_chosen`` / ``reward_rejected`` (mean of β·Δ), ``margin`` (mean z),
    ``accuracy`` (fraction with z > 0).
    """
    chosen_reward = beta * (chosen_policy - chosen_ref)
    rejected_reward = beta * (rejected_policy - rejected_ref)
    z = chosen_reward - rejected_reward
    loss = -F.logsigmoid(z).mean()
    metrics = {
        "loss": loss.detach(),
        "reward_chosen": chosen_reward.detach().mean(),
        "reward_rejected": rejected_reward.detach().mean(),
        "margin": z.detach().mean(),
        "accuracy": (z.detach() > 0).float().mean(),
    }
    return loss, metrics


def clo_loss(
    policy_logps: dict[str, torch.Tensor],
    ref_logps: dict[str, torch.Tensor],
    nll: torch.Tensor,
    beta: float = 0.1,
    lam: float = 0.5,
) -> tuple[torch.Tensor, dict]:
    """Cross-Lingual Optimization loss (DESIGN.md section 1).

    .. math::
        \\Delta_k = \\log\\pi_\\theta(k) - \\log\\pi_{ref}(k)

        z_{en} = \\beta(\\Delta_{en\\_en} - \\Delta_{en\\_tgt}),\\quad
        z_{tgt} = \\beta(\\Delta_{tgt\\_tgt} - \\Delta_{tgt\\_en})

        L_{CL} = \\operatorname{mean}_b[-\\log\\sigma(z_{en}) - \\log\\sigma(z_{tgt})]

        L_{CLO} = \\lambda\\, L_{SFT} + (1-\\lambda)\\, L_{CL}

    Args:
        policy_logps, ref_logps: ``{key: [batch]}`` summed response log-probs for the four keys.
        nll: the SFT term (target-language NLL, token mean), a scalar tensor.

    Metrics: ``loss``, ``nll``, ``cl`` (= ``cl_en`` + ``cl_tgt``), and per direction ``margin_*``
    (mean z), ``acc_*`` (fraction with z > 0), ``reward_chosen_*`` / ``reward_rejected_*``.
    """
    missing = [k for k in KEYS if k not in policy_logps or k not in ref_logps]
    if missing:
        raise KeyError(f"clo_loss: missing log-probs for {missing}; expected keys {KEYS}")
    delta = {k: policy_logps[k] - ref_logps[k] for k in KEYS}
    terms = {}
    metrics: dict[str, torch.Tensor] = {}
    for name, chosen, rejected in (("en", "en_en", "en_tgt"), ("tgt", "tgt_tgt", "tgt_en")):
        z = beta * (delta[chosen] - delta[rejected])
        terms[name] = -F.logsigmoid(z).mean()
        metrics[f"cl_{name}"] = terms[name].detach()
        metrics[f"margin_{name}"] = z.detach().mean()
        metrics[f"acc_{name}"] = (z.detach() > 0).float().mean()
        metrics[f"reward_chosen_{name}"] = beta * delta[chosen].detach().mean()
        metrics[f"reward_rejected_{name}"] = beta * delta[rejected].detach().mean()
    cl = terms["en"] + terms["tgt"]
    loss = lam * nll + (1.0 - lam) * cl
    metrics.update(loss=loss.detach(), nll=nll.detach(), cl=cl.detach())
    return loss, metrics
