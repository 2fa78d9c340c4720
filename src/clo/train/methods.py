"""The registry of training methods: what a training unit is and which objective scores it.

A *unit* is what the sampler shuffles and a batch counts: for ``clo`` the whole quadruple (its
four sequences always share a batch, which is the point of CLO), for ``dpo`` one preference row
``(prompt, chosen, rejected)``, for the SFT baselines one ``(prompt, response)`` row. Units name
their sequences by the keys of :data:`clo.train.data.SEQUENCES`; the objective sees their summed
log-probs, and their response token counts, as ``[batch, slots]`` tensors in the order of the unit's keys.

Composite methods (``sft+dpo``) are listed in :data:`STAGES` and run their stages in order.

With several target languages (``lang: [sw, yo]``), :func:`get` returns the method specialised to
them (:func:`for_langs`): the keys name the languages (:func:`clo.train.data.multilingual_keys`),
``clo``'s unit is the whole example (its ``1 + 3k`` sequences share a batch) scored by
:func:`clo.train.losses.clo_multi_loss`, and the baselines make their rows for every language.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from clo.registry import unknown_name_message
from clo.train.losses import KEYS, REFERENCE_FREE, clo_loss, clo_multi_loss, dpo_loss

#: (logps [b,k], ref [b,k] | None, nll scalar | None, train config, counts [b,k] | None) -> (loss, metrics)
Objective = Callable[[torch.Tensor, "torch.Tensor | None", "torch.Tensor | None", object, "torch.Tensor | None"],
                     tuple]


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    unit_keys: Callable[[object], list[tuple[str, ...]]]  # train config -> key tuples made per example
    nll_slots: Callable[[object, tuple[str, ...]], list[int]]  # (train config, unit keys) -> NLL slots
    objective: Objective
    needs_reference: Callable[[object], bool]  # train config -> whether the objective reads reference log-probs


def _always(cfg) -> bool:
    return True


def _never(cfg) -> bool:
    return False


def _clo_needs_reference(cfg) -> bool:
    return cfg.cl_loss not in REFERENCE_FREE


def _sft_objective(logps, ref, nll, cfg, counts=None):
    return nll, {"loss": nll.detach(), "nll": nll.detach()}


def _all_slots(cfg, keys):
    return list(range(len(keys)))


def _dpo_objective(logps, ref, nll, cfg, counts=None):
    return dpo_loss(logps[:, 0], logps[:, 1], ref[:, 0], ref[:, 1], beta=cfg.beta)


def _clo_objective(logps, ref, nll, cfg, counts=None):
    return clo_loss(dict(zip(KEYS, logps.unbind(1))), None if ref is None else dict(zip(KEYS, ref.unbind(1))), nll,
                    cfg.beta, cfg.lam, cl_loss=cfg.cl_loss,
                    counts=None if counts is None else dict(zip(KEYS, counts.unbind(1))),
                    label_smoothing=cfg.label_smoothing, simpo_gamma=cfg.simpo_gamma)


def _clo_nll_slots(cfg, keys):
    # nll_langs names response languages of the SAME-language pairs: tgt -> tgt_tgt, en -> en_en.
    wanted = {f"{lang}_{lang}" for lang in cfg.nll_langs}
    return [i for i, k in enumerate(keys) if k in wanted]


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("sft", "NLL on (x_en -> y_en) and (x_tgt -> y_tgt) rows",
               lambda cfg: [("en_en",), ("tgt_tgt",)], _all_slots, _sft_objective, _never),
        Method("sft-eng", "NLL on (x_en -> y_en) rows only",
               lambda cfg: [("en_en",)], _all_slots, _sft_objective, _never),
        Method("sft-tgt", "NLL on (x_tgt -> y_tgt) rows only",
               lambda cfg: [("tgt_tgt",)], _all_slots, _sft_objective, _never),
        Method("dpo", "sigmoid DPO on independent rows (x_en, y_en > y_tgt) and (x_tgt, y_tgt > y_en)",
               lambda cfg: [("en_en", "en_tgt"), ("tgt_tgt", "tgt_en")], lambda cfg, keys: [],
               _dpo_objective, _always),
        Method("clo", "cross-lingual optimisation: lam * NLL(nll_langs) + (1 - lam) * (CL_en + CL_tgt), CL of "
               "train.cl_loss", lambda cfg: [KEYS], _clo_nll_slots, _clo_objective, _clo_needs_reference),
    )
}

STAGES: dict[str, list[str]] = {"sft+dpo": ["sft", "dpo"]}


def get(name: str, langs: list[str] | None = None) -> Method:
    """The method ``name``; with two or more target languages ``langs``, specialised to them."""
    if name not in METHODS:
        raise ValueError(unknown_name_message("method", name, [*METHODS, *STAGES]))
    method = METHODS[name]
    return for_langs(method, langs) if langs is not None and len(langs) > 1 else method


def _multi_unit_keys(name: str, langs: list[str]) -> list[tuple[str, ...]]:
    from clo.train.data import multilingual_keys

    en, own = [("en_en",)], [(f"{lang}_{lang}",) for lang in langs]
    return {
        "sft": en + own,
        "sft-eng": en,
        "sft-tgt": own,
        "dpo": [("en_en", f"en_{lang}") for lang in langs] + [(f"{lang}_{lang}", f"{lang}_en") for lang in langs],
        "clo": [multilingual_keys(langs)],
    }[name]


def for_langs(method: Method, langs: list[str]) -> Method:
    """``method`` for the target languages ``langs`` (two or more): unit keys per language; for
    ``clo`` the NLL slots (``nll_langs``: ``tgt`` is every ``l_l``, ``en`` is ``en_en``) and the
    objective :func:`~clo.train.losses.clo_multi_loss`."""
    langs = list(langs)
    keys = _multi_unit_keys(method.name, langs)
    if method.name != "clo":
        return replace(method, unit_keys=lambda cfg: list(keys))

    def nll_slots(cfg, unit):
        wanted = {k for lang in cfg.nll_langs for k in ([f"{c}_{c}" for c in langs] if lang == "tgt" else ["en_en"])}
        return [i for i, k in enumerate(unit) if k in wanted]

    def objective(logps, ref, nll, cfg, counts=None):
        unit = keys[0]
        return clo_multi_loss(dict(zip(unit, logps.unbind(1))), None if ref is None else dict(zip(unit, ref.unbind(1))),
                              nll, langs, cfg.beta, cfg.lam, cl_loss=cfg.cl_loss,
                              counts=None if counts is None else dict(zip(unit, counts.unbind(1))),
                              label_smoothing=cfg.label_smoothing, simpo_gamma=cfg.simpo_gamma)

    return replace(method, description=f"{method.description}; languages {'+'.join(langs)} (clo_multi_loss)",
                   unit_keys=lambda cfg: list(keys), nll_slots=nll_slots, objective=objective)
