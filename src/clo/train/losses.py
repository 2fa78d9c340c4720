"""The training objectives as pure functions: tensors in, ``(loss, metrics)`` out.

Sequence log-probs are SUMS over the response tokens, as in the paper's objective (docs/train.md,
Methods). Keys of the CLO dicts are ``<prompt lang>_<response lang>``: ``en_en``, ``en_tgt``,
``tgt_tgt``, ``tgt_en``.
Metrics are detached scalar tensors, so callers may average them across micro-batches or ranks.

The preference terms of the cross-lingual family (``train.cl_loss``) take one direction's chosen and
rejected sequences, ``[b]`` each, and return ``(losses [b], chosen_rewards [b], rejected_rewards [b])``
as torchtune's preference losses do; :func:`clo_loss` applies one to both directions. Each follows
TRL's implementation of the same loss (``DPOTrainer`` for sigmoid/ipo/hinge/robust, ``ORPOTrainer``'s
odds ratio, ``CPOTrainer`` with ``loss_type="simpo"``); tests/test_train_cl_losses.py checks them on
the same log-probs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clo.registry import unknown_name_message

KEYS = ("en_en", "en_tgt", "tgt_tgt", "tgt_en")
#: The two directions of L_CL: (name, chosen key, rejected key).
DIRECTIONS = (("en", "en_en", "en_tgt"), ("tgt", "tgt_tgt", "tgt_en"))
CL_LOSSES = ("sigmoid", "ipo", "hinge", "robust", "orpo", "simpo")
#: Preference terms computed from the policy alone: no reference pass, no reference cache.
REFERENCE_FREE = frozenset({"orpo", "simpo"})


def sft_nll(sum_logps: torch.Tensor, n_tokens: torch.Tensor | float,
            reduction: str = "token") -> tuple[torch.Tensor, dict]:
    """Negative log-likelihood, token mean or sequence mean (``train.nll_reduction``).

    .. math::  L_{SFT}^{token} = -\\frac{\\sum_i \\log \\pi(y_i | x_i)}{\\sum_i |y_i|} \\qquad
               L_{SFT}^{sequence} = -\\frac{1}{N} \\sum_{i=1}^{N} \\log \\pi(y_i | x_i)

    The sequence form is the paper's eq. 9 as written (``log π(y|x)`` summed over the response's
    tokens); it weighs a long response by its length, which changes what λ balances against L_CL.

    Args:
        sum_logps: summed response log-probs, shape ``[n]`` (any shape; all entries summed).
        n_tokens: ``token``: the token count to normalise by, a tensor of per-sequence counts
            (summed) or a number; passing the count of a whole global batch lets a micro-batch
            contribute its exact share of the global token mean. ``sequence``: the number of
            sequences to average over (a number, e.g. the global batch's), or a tensor of
            per-sequence counts, whose length is that number.
        reduction: ``token`` or ``sequence``.
    """
    if reduction == "sequence":
        n = n_tokens.numel() if isinstance(n_tokens, torch.Tensor) else n_tokens
        denom = torch.tensor(float(n))
    elif reduction == "token":
        denom = n_tokens.sum() if isinstance(n_tokens, torch.Tensor) else torch.tensor(float(n_tokens))
    else:
        raise ValueError(f"sft_nll: reduction must be 'token' or 'sequence', got {reduction!r}")
    if float(denom) <= 0:
        raise ValueError(f"sft_nll: no response {'sequences' if reduction == 'sequence' else 'tokens'} to average over")
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


def _per_token(logps: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    # TRL's length normalisation: a response never counts fewer than one token.
    return logps / counts.to(logps.dtype).clamp(min=1.0)


def sigmoid_preference(chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, beta: float = 0.1):
    """DPO's sigmoid term (Rafailov et al. 2023), the paper's L_CL.

    .. math::  \\ell = -\\log\\sigma\\big(\\beta(\\Delta_w - \\Delta_l)\\big),\\qquad
        \\Delta = \\log\\pi_\\theta(y|x) - \\log\\pi_{ref}(y|x)

    Rewards: :math:`\\beta\\Delta_w`, :math:`\\beta\\Delta_l`.
    """
    chosen, rejected = beta * chosen_logratios, beta * rejected_logratios
    return -F.logsigmoid(chosen - rejected), chosen, rejected


def ipo_preference(chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, chosen_counts: torch.Tensor,
                   rejected_counts: torch.Tensor, beta: float = 0.1):
    """IPO (Azar et al. 2023, eq. 17) on per-token log-ratios, as TRL computes it.

    .. math::  \\ell = \\Big(\\frac{\\Delta_w}{|y_w|} - \\frac{\\Delta_l}{|y_l|} - \\frac{1}{2\\beta}\\Big)^2

    (summed log-ratios make the square grow with length; TRL normalises by the response token
    counts, which the IPO authors confirmed). Rewards: :math:`\\beta\\Delta`.
    """
    h = _per_token(chosen_logratios, chosen_counts) - _per_token(rejected_logratios, rejected_counts)
    return (h - 1 / (2 * beta)) ** 2, beta * chosen_logratios, beta * rejected_logratios


def hinge_preference(chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, beta: float = 0.1):
    """Hinge term (SLiC, Zhao et al. 2023).

    .. math::  \\ell = \\max\\big(0,\\ 1 - \\beta(\\Delta_w - \\Delta_l)\\big)

    Rewards: :math:`\\beta\\Delta`.
    """
    chosen, rejected = beta * chosen_logratios, beta * rejected_logratios
    return torch.relu(1 - (chosen - rejected)), chosen, rejected


def robust_preference(chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, beta: float = 0.1,
                      label_smoothing: float = 0.1):
    """Robust DPO (Chowdhury et al. 2024): unbiased under preference labels flipped with probability ε.

    .. math::  \\ell = \\frac{-(1-\\varepsilon)\\log\\sigma(z) + \\varepsilon\\log\\sigma(-z)}{1 - 2\\varepsilon},
        \\qquad z = \\beta(\\Delta_w - \\Delta_l),\\quad 0 \\le \\varepsilon < 1/2

    Rewards: :math:`\\beta\\Delta`.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"robust_preference: label_smoothing must be in [0, 0.5), got {label_smoothing}")
    chosen, rejected = beta * chosen_logratios, beta * rejected_logratios
    z = chosen - rejected
    eps = label_smoothing
    return (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps), chosen, rejected


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, branching at -ln 2 against cancellation (Mächler 2012)."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_preference(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, chosen_counts: torch.Tensor,
                    rejected_counts: torch.Tensor, beta: float = 0.1):
    """ORPO's odds-ratio term (Hong et al. 2024, eqs. 4 and 7); reference-free.

    .. math::
        \\bar p = \\frac{\\log\\pi_\\theta(y|x)}{|y|},\\qquad
        \\log\\mathrm{odds}(y|x) = \\bar p - \\log(1 - e^{\\bar p})

        \\ell = -\\beta \\log\\sigma\\big(\\log\\mathrm{odds}(y_w|x) - \\log\\mathrm{odds}(y_l|x)\\big)

    ``β`` is ORPO's λ (TRL's ``beta``). Only the odds-ratio part: ORPO's own NLL term is, in CLO,
    the λ-weighted target NLL already (``L_CLO = λ L_SFT + (1-λ) L_CL``). Rewards: :math:`\\beta\\bar p`.
    """
    dtype = torch.promote_types(chosen_logps.dtype, torch.float32)  # TRL computes the odds in fp32
    w = _per_token(chosen_logps.to(dtype), chosen_counts)
    lo = _per_token(rejected_logps.to(dtype), rejected_counts)
    log_odds = (w - lo) - (_log1mexp(w) - _log1mexp(lo))
    return -beta * F.logsigmoid(log_odds), beta * w, beta * lo


def simpo_preference(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, chosen_counts: torch.Tensor,
                     rejected_counts: torch.Tensor, beta: float = 2.0, gamma: float = 0.5,
                     label_smoothing: float = 0.0):
    """SimPO (Meng et al. 2024): length-normalised log-probs with a target margin; reference-free.

    .. math::
        z = \\beta\\Big(\\frac{\\log\\pi_\\theta(y_w|x)}{|y_w|} - \\frac{\\log\\pi_\\theta(y_l|x)}{|y_l|}\\Big) - \\gamma,
        \\qquad \\ell = -(1-\\varepsilon)\\log\\sigma(z) - \\varepsilon\\log\\sigma(-z)

    ``γ`` is TRL's ``simpo_gamma`` (TRL subtracts ``γ/β`` before scaling by ``β``: the same z);
    ``ε`` is CPO's conservative label smoothing (0: SimPO). Rewards: β times the per-token log-probs.
    """
    chosen = beta * _per_token(chosen_logps, chosen_counts)
    rejected = beta * _per_token(rejected_logps, rejected_counts)
    z = chosen - rejected - gamma
    eps = label_smoothing
    return -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z), chosen, rejected


def preference_term(cl_loss: str, chosen: torch.Tensor, rejected: torch.Tensor,
                    chosen_counts: torch.Tensor | None, rejected_counts: torch.Tensor | None, *,
                    beta: float, label_smoothing: float = 0.0, simpo_gamma: float = 0.5):
    """The ``cl_loss`` term on one direction: ``chosen``/``rejected`` are log-ratios (policy minus
    reference) for the reference-based terms and policy log-probs for :data:`REFERENCE_FREE` ones."""
    needs_counts = cl_loss in ("ipo", "orpo", "simpo")
    if needs_counts and (chosen_counts is None or rejected_counts is None):
        raise ValueError(f"cl_loss={cl_loss!r} normalises by response length: pass the token counts")
    if cl_loss == "sigmoid":
        return sigmoid_preference(chosen, rejected, beta)
    if cl_loss == "ipo":
        return ipo_preference(chosen, rejected, chosen_counts, rejected_counts, beta)
    if cl_loss == "hinge":
        return hinge_preference(chosen, rejected, beta)
    if cl_loss == "robust":
        return robust_preference(chosen, rejected, beta, label_smoothing)
    if cl_loss == "orpo":
        return orpo_preference(chosen, rejected, chosen_counts, rejected_counts, beta)
    if cl_loss == "simpo":
        return simpo_preference(chosen, rejected, chosen_counts, rejected_counts, beta, simpo_gamma, label_smoothing)
    raise ValueError(unknown_name_message("cl_loss", cl_loss, CL_LOSSES))


def _direction_terms(caller, directions, policy_logps, ref_logps, counts, cl_loss, beta, label_smoothing,
                     simpo_gamma) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``({direction: mean loss}, per-direction metrics)`` of the ``cl_loss`` term for each
    ``(name, chosen key, rejected key)``, on log-ratios (or policy log-probs when reference-free)."""
    keys = sorted({k for _, c, r in directions for k in (c, r)})
    reference_free = cl_loss in REFERENCE_FREE
    missing = [k for k in keys if k not in policy_logps or (not reference_free and (ref_logps is None
                                                                                       or k not in ref_logps))]
    if missing:
        raise KeyError(f"{caller}: missing log-probs for {missing}; expected keys {keys}")
    scores = policy_logps if reference_free else {k: policy_logps[k] - ref_logps[k] for k in keys}
    counts = counts or {}
    terms: dict[str, torch.Tensor] = {}
    metrics: dict[str, torch.Tensor] = {}
    for name, chosen, rejected in directions:
        losses, r_chosen, r_rejected = preference_term(
            cl_loss, scores[chosen], scores[rejected], counts.get(chosen), counts.get(rejected), beta=beta,
            label_smoothing=label_smoothing, simpo_gamma=simpo_gamma)
        margin = (r_chosen - r_rejected).detach()
        terms[name] = losses.mean()
        metrics[f"cl_{name}"] = terms[name].detach()
        metrics[f"margin_{name}"] = margin.mean()
        metrics[f"acc_{name}"] = (margin > 0).float().mean()
        metrics[f"reward_chosen_{name}"] = r_chosen.detach().mean()
        metrics[f"reward_rejected_{name}"] = r_rejected.detach().mean()
    return terms, metrics


def clo_loss(
    policy_logps: dict[str, torch.Tensor],
    ref_logps: dict[str, torch.Tensor] | None,
    nll: torch.Tensor,
    beta: float = 0.1,
    lam: float = 0.5,
    *,
    cl_loss: str = "sigmoid",
    counts: dict[str, torch.Tensor] | None = None,
    label_smoothing: float = 0.0,
    simpo_gamma: float = 0.5,
) -> tuple[torch.Tensor, dict]:
    """Cross-Lingual Optimization loss (docs/train.md, Methods).

    .. math::
        \\Delta_k = \\log\\pi_\\theta(k) - \\log\\pi_{ref}(k)

        z_{en} = \\beta(\\Delta_{en\\_en} - \\Delta_{en\\_tgt}),\\quad
        z_{tgt} = \\beta(\\Delta_{tgt\\_tgt} - \\Delta_{tgt\\_en})

        L_{CL} = \\operatorname{mean}_b[-\\log\\sigma(z_{en}) - \\log\\sigma(z_{tgt})]

        L_{CLO} = \\lambda\\, L_{SFT} + (1-\\lambda)\\, L_{CL}

    ``cl_loss`` swaps the preference term of both directions, the rest unchanged:
    ``L_CL = mean_b[ℓ(en_en ≻ en_tgt) + ℓ(tgt_tgt ≻ tgt_en)]`` with ℓ one of
    :func:`sigmoid_preference` (the above, the default), :func:`ipo_preference`,
    :func:`hinge_preference`, :func:`robust_preference`, or the reference-free
    :func:`orpo_preference` and :func:`simpo_preference` (``ref_logps`` may then be None).

    Args:
        policy_logps, ref_logps: ``{key: [batch]}`` summed response log-probs for the four keys.
        nll: the SFT term (target-language NLL, token mean), a scalar tensor.
        counts: ``{key: [batch]}`` response token counts; needed by ipo, orpo and simpo.

    Metrics: ``loss``, ``nll``, ``cl`` (= ``cl_en`` + ``cl_tgt``), and per direction ``margin_*``
    (mean chosen minus rejected reward: z for sigmoid), ``acc_*`` (fraction with a positive margin),
    ``reward_chosen_*`` / ``reward_rejected_*``.
    """
    terms, metrics = _direction_terms("clo_loss", DIRECTIONS, policy_logps, ref_logps, counts, cl_loss,
                                      beta, label_smoothing, simpo_gamma)
    cl = terms["en"] + terms["tgt"]
    loss = lam * nll + (1.0 - lam) * cl
    metrics.update(loss=loss.detach(), nll=nll.detach(), cl=cl.detach())
    return loss, metrics


def multilingual_directions(langs: list[str] | tuple[str, ...]) -> tuple[tuple[str, str, str], ...]:
    """The ``2k`` directions of L_CL with ``k`` target languages: (name, chosen key, rejected key),
    ``en_<l>``: English prompt, y_en ≻ y_l; ``<l>``: prompt in l, y_l ≻ y_en."""
    return (*((f"en_{lang}", "en_en", f"en_{lang}") for lang in langs),
            *((lang, f"{lang}_{lang}", f"{lang}_en") for lang in langs))


def clo_multi_loss(
    policy_logps: dict[str, torch.Tensor],
    ref_logps: dict[str, torch.Tensor] | None,
    nll: torch.Tensor,
    langs: list[str] | tuple[str, ...],
    beta: float = 0.1,
    lam: float = 0.5,
    *,
    cl_loss: str = "sigmoid",
    counts: dict[str, torch.Tensor] | None = None,
    label_smoothing: float = 0.0,
    simpo_gamma: float = 0.5,
) -> tuple[torch.Tensor, dict]:
    """CLO with several target languages ``l = 1..k`` sharing each English example.

    .. math::
        L_{CL} = \\sum_{l} \\operatorname{mean}_b\\big[\\ell(en\\_en \\succ en\\_l)\\big]
               + \\operatorname{mean}_b\\big[\\ell(l\\_l \\succ l\\_en)\\big]

        L_{CLO} = \\lambda\\, L_{SFT} + (1-\\lambda)\\, L_{CL}

    with ℓ the ``cl_loss`` term of :func:`clo_loss` (on log-ratios Δ = log π_θ − log π_ref, or on
    policy log-probs for the reference-free ones) and ``L_SFT`` the token-mean NLL over every
    target's ``l_l`` responses (computed by the caller, as for :func:`clo_loss`). With ``k = 1``
    and the keys ``en_tgt, tgt_tgt, tgt_en`` named by the language, this is :func:`clo_loss`.

    Args:
        policy_logps, ref_logps: ``{key: [batch]}`` for ``en_en`` and, per language, ``en_l``,
            ``l_l``, ``l_en`` (:func:`clo.train.data.multilingual_keys`).
        langs: the target language codes.

    Metrics: ``loss``, ``nll``, ``cl``; per direction (``en_<l>`` and ``<l>``) ``cl_*``, ``margin_*``,
    ``acc_*``, ``reward_chosen_*``, ``reward_rejected_*``; and over the languages ``cl_en`` /
    ``cl_tgt`` (sums), ``margin_en`` / ``margin_tgt`` / ``acc_en`` / ``acc_tgt`` (means).
    """
    langs = list(langs)
    if len(langs) < 1 or len(set(langs)) != len(langs) or "en" in langs:
        raise ValueError(f"clo_multi_loss: langs must be distinct target languages (not en), got {langs}")
    terms, metrics = _direction_terms("clo_multi_loss", multilingual_directions(langs), policy_logps, ref_logps,
                                      counts, cl_loss, beta, label_smoothing, simpo_gamma)
    k = len(langs)
    for side, names in (("en", [f"en_{lang}" for lang in langs]), ("tgt", langs)):
        metrics[f"cl_{side}"] = sum(metrics[f"cl_{n}"] for n in names)
        metrics[f"margin_{side}"] = sum(metrics[f"margin_{n}"] for n in names) / k
        metrics[f"acc_{side}"] = sum(metrics[f"acc_{n}"] for n in names) / k
    cl = sum(terms.values())
    loss = lam * nll + (1.0 - lam) * cl
    metrics.update(loss=loss.detach(), nll=nll.detach(), cl=cl.detach())
    return loss, metrics
