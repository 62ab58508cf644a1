"""`sltlab report`: one page that answers "does LayerNorm give more consistent but less diverse tickets?".

It reads whatever the store holds and never assumes a full sweep. The first screen is the question and the
claims table (`sections_claims`): every comparison a study declared in its `[claims]` plan, paired by weight seed,
with n, effect [CI], p, Holm-adjusted p across the whole report, the minimum detectable effect and a verdict
(supported / contradicted / equivalent within margin / inconclusive), a forest plot, and one figure per claim.
The detail follows, folded: plans and the audit of every grid choice (made on held-out training data), the store
overview, error vs source width with both laws fitted per weight seed, error per block in depth, ticket
consistency, attention entropy and head diversity, task tables, IMP across rounds. Detail sections describe
(means with t intervals over weight seeds); only the claims table tests.

Outputs in the chosen folder: report.html (self-contained: figures embedded as data URIs, inline CSS),
report.md (links the PNGs), figures/*.png and report.json (every number the text quotes).

Layout: `build` runs the sections (`sections_*`, one module per report section) and `render` writes them;
`blocks` holds the tables, paragraphs and figures a section is made of, `plots` draws the figures,
`settings` holds the grouping of runs, `measures` what a claim can measure, `context` what sections share.
"""

from sltlab.report.blocks import Figures, Section, Table, fmt
from sltlab.report.build import ReportResult, build_report
from sltlab.report.sections_consistency import consistency_groups, cross_norm_overlap
from sltlab.report.settings import is_ln

__all__ = [
    "Figures",
    "ReportResult",
    "Section",
    "Table",
    "build_report",
    "consistency_groups",
    "cross_norm_overlap",
    "fmt",
    "is_ln",
]
