"""reports/report.html: one self-contained page (figures inlined) with the per-defense
table, attack results and the figures, for people who would rather look than read.
Figures come in titled sections; files that are not images (an attack's score table)
are listed by path instead of being inlined as broken pictures."""

from __future__ import annotations

import base64
from pathlib import Path

from jinja2 import Environment, select_autoescape

from components.atomic import atomic_write_text
from components.reporting.metrics_file import summary_rows

TEMPLATE = """<!doctype html>
<html><head><meta charset="utf-8"><title>privface report: {{ dataset.name }}</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.na{color:#999}figure{display:inline-block;margin:0 1em 1em 0}figcaption{font-size:90%;color:#444}
</style></head><body>
<h1>privface: privacy-utility report</h1>
<p>Dataset <b>{{ dataset.name }}</b> (version {{ dataset.version }}): {{ dataset.identities }} identities,
{{ dataset.images }} images. Profile <b>{{ profile }}</b>.</p>
<h2>Utility and scores</h2>
<table><tr>{% for c in columns %}<th>{{ c }}</th>{% endfor %}</tr>
{% for r in rows %}<tr>{% for c in columns %}<td>{% if r[c] is none %}<span class="na">n/a</span>{% elif r[c] is number %}{{ "%.4f"|format(r[c]) if r[c] is float else r[c] }}{% else %}{{ r[c] }}{% endif %}</td>{% endfor %}</tr>
{% endfor %}</table>
<p>Privacy and overall scores appear once attacks have been measured against a defense
(n/a: nothing measured, nothing invented).</p>
<h3>How the scores are computed</h3>
<ul>
<li><b>advantage</b> of an attack: 0 at chance, 1 at total success. Reconstruction: SAR type 2 divided by the
judge's own acceptance of genuine pairs at the same threshold (FMR 1e-3 over every cross-identity test pair);
model inversion: top-1 rescaled by chance 1/K; membership: 2 AUC - 1; attribute inference: (balanced accuracy -
chance) / (1 - chance); retrieval: identity top-1 rescaled by chance. Floored at 0.</li>
<li><b>privacy</b> = 0.4 (1 - largest reconstruction SSIM) + 0.6 (1 - largest advantage), over the attacks in
the defense's threat model (the baseline claims nothing and is scored over every attack); <b>privacy all</b>:
the same over every attack that ran. Higher is more private.</li>
<li><b>utility</b> = the lower of accuracy / the baseline's and TAR@FAR=1e-3 / the baseline's, capped at 1;
<b>overall</b> = harmonic mean of privacy and utility. Higher is better.</li>
</ul>
<h2>Attacks</h2>
{% for name, d in defenses.items() %}<h3>{{ name }}</h3>
{% if d.params %}<p>Operating point: {{ d.params }}</p>{% endif %}
{% if d.threat_model %}<p>Threat model: protects {{ d.threat_model.protects|join(", ") or "nothing" }}; in scope:
{{ d.threat_model.in_scope|join(", ") or "every attack" }}{% if d.threat_model.attributes %} (attributes:
{{ d.threat_model.attributes|join(", ") }}){% endif %}. {{ d.threat_model.note }}</p>{% endif %}
{% if d.attacks %}<table>
<tr><th>attack</th><th>measures</th><th>strength (attacker data, epochs, lr, architecture)</th></tr>
{% for a, m in d.attacks.items() %}<tr><td>{{ a }}</td><td style="text-align:left">{{ m }}</td><td style="text-align:left">{{ strength.get(name, {}).get(a, "") }}</td></tr>{% endfor %}</table>
{% else %}<p class="na">No attack has been run against this defense yet.</p>{% endif %}
{% if d.not_applicable %}<table><tr><th>not applicable</th><th>reason</th></tr>
{% for a, why in d.not_applicable.items() %}<tr><td>{{ a }}</td><td style="text-align:left">{{ why }}</td></tr>{% endfor %}</table>{% endif %}
{% if d.mlflow %}<p>MLflow: run {{ d.mlflow.run_id }}, model {{ d.mlflow.model_uri }}, version {{ d.mlflow.model_version }}</p>{% endif %}
{% endfor %}
{% for section, sec in figures %}<h2>{{ section }}</h2>
{% for caption, mime, data in sec.images %}<figure><img src="data:{{ mime }};base64,{{ data }}" alt="{{ caption }}"><figcaption>{{ caption }}</figcaption></figure>
{% endfor %}{% if sec.files %}<ul>{% for caption, file in sec.files %}<li>{{ caption }}: <code>{{ file }}</code></li>{% endfor %}</ul>{% endif %}
{% endfor %}
</body></html>
"""


IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif"}


def _section(items: dict[str, str | Path]) -> dict:
    images, files = [], []
    for caption, file in items.items():
        mime = IMAGE_TYPES.get(Path(file).suffix.lower())
        if mime:
            images.append((caption, mime, base64.b64encode(Path(file).read_bytes()).decode()))
        else:
            files.append((caption, str(file)))
    return {"images": images, "files": files}


def render_report(metrics: dict, figures: dict[str, dict[str, str | Path]], path: str | Path,
                  profile: str = "", strength: dict | None = None) -> Path:
    """Write report.html; `figures` maps a section title to {caption: file}: images are
    inlined, other files listed with their path. Empty sections are left out."""
    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    rows = summary_rows(metrics)
    columns = list(rows[0].keys()) if rows else []
    inlined = [(title, _section(items)) for title, items in figures.items() if items]
    html = env.from_string(TEMPLATE).render(
        dataset=metrics["dataset"], defenses=metrics["defenses"], rows=rows, columns=columns,
        figures=inlined, profile=profile, strength=strength or {})
    return atomic_write_text(path, html)
