"""The model card of a registered version: the MLflow registry's description, so that the
UI says what a version protects against, what it costs and whether the gate passed it,
without opening the report. Plain markdown from plain dicts; filled in twice: at
registration (utility) and at the gate (privacy and the verdict)."""

from __future__ import annotations

__all__ = ["model_card"]


def _figure(value, ci=None) -> str:
    if value is None:
        return "not measured"
    text = f"{float(value):.3f}"
    if ci:
        text += f" [{float(ci[0]):.3f}, {float(ci[1]):.3f}]"
    return text


def model_card(defense: str, threat_model: dict, utility: dict, *, data_version: str, code_version: str,
               data_digest: str = "", scores: dict | None = None, gate: dict | None = None) -> str:
    """Markdown: defense, threat model, utility (and privacy scores) with their 95%
    intervals where measured, the gate's verdict, data and code versions."""
    uci = utility.get("ci95", {})
    lines = [f"**privface `{defense}`**", ""]
    protects = ", ".join(threat_model.get("protects", [])) or "nothing (the reference)"
    lines += [f"- Protects: {protects}",
              f"- Attacks in its scope: {', '.join(threat_model.get('in_scope', [])) or 'none'}"]
    if threat_model.get("note"):
        lines.append(f"- Threat model: {threat_model['note']}")
    accuracy = _figure(utility.get("verification_accuracy"), uci.get("verification_accuracy"))
    lines += [f"- Verification accuracy: {accuracy}",
              f"- TAR@FAR=1e-3: {_figure(utility.get('tar_at_far_1e-3'), uci.get('tar_at_far_1e-3'))}"]
    if scores is None:
        lines.append("- Privacy: measured by the report run, then written here with the gate's verdict")
    else:
        sci = scores.get("ci95", {})
        lines += [f"- Scores: utility {_figure(scores.get('utility'), sci.get('utility'))}, privacy "
                  f"{_figure(scores.get('privacy'), sci.get('privacy'))}, overall "
                  f"{_figure(scores.get('overall'), sci.get('overall'))}"]
    if gate is not None:
        verdict = "passed" if gate.get("passed") else "failed"
        lines.append(f"- Promotion gate: {verdict} ({'; '.join(gate.get('reasons', [])) or 'no reasons given'})")
    digest = f", data digest {data_digest}" if data_digest and data_digest != data_version else ""
    lines.append(f"- Data version {data_version}{digest}; code version {code_version}")
    return "\n".join(lines)
