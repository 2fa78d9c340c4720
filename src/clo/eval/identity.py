"""What names a model under evaluation: a string that changes when its weights change."""

from __future__ import annotations

import hashlib


def model_identity(model, spec: str | None) -> str:
    """A string that changes when the weights change: the spec for a loaded spec, else the
    checkpoint name plus a digest of a sample of every parameter tensor."""
    if spec is not None:
        from clo.identity import model_digest
        from clo.identity import model_identity as identity

        # A checkpoint directory can be overwritten by a new training run, a hub id can move to
        # another commit: the name carries a digest of the content (clo.identity).
        ident = identity(spec)
        if "sha256" in ident or ident.get("revision"):
            return f"{spec}@{model_digest(spec)}"
        return spec
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        flat = p.detach().reshape(-1)
        h.update(name.encode())
        h.update(flat[:64].float().cpu().numpy().tobytes())
        h.update(flat[-64:].float().cpu().numpy().tobytes())
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
    return f"{name}@{h.hexdigest()[:16]}"
