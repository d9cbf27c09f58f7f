"""What a policy says when it is given another family's folder: the family table
(`ddpo.adapters.families`, above every family) registers each family's title and policy here, so
that the checks below it name the policy to use without importing the table."""

_HINTS: dict[str, str] = {}


def register_family_hint(pipeline_class: str, hint: str) -> None:
    """``hint`` (``"a FLUX.1 model: use DefaultDDPOFluxPipeline for it"``) for folders of
    ``pipeline_class``."""
    _HINTS[pipeline_class] = hint


def family_hint(pipeline_class: object) -> str | None:
    """The registered hint for ``pipeline_class`` (``None`` for a class no family trains)."""
    return _HINTS.get(pipeline_class) if isinstance(pipeline_class, str) else None


__all__ = ["family_hint", "register_family_hint"]
