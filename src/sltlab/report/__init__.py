"""`sltlab report`: one page that answers "does LayerNorm give more consistent but less diverse tickets?".

It reads whatever the store holds and never assumes a full sweep: each section says which runs it used and,
when its runs are missing, what to run to fill it. Sections:

1. error vs source width per norm variant (log y, seeds as dots, fitted exponential law and its slope);
2. error per block in depth (stacks) and mask density per layer;
3. ticket consistency: Jaccard overlap of tickets found from different score seeds on the same weights;
4. attention entropy and head diversity per layer: ticket vs its random source vs the dense target;
5. GLUE (and PEFT / LM) tables with bootstrap intervals and Kruskal-Wallis across methods;
6. IMP tickets across pruning rounds: kept fraction, overlap with the previous and the final round, dev metric,
   and the overlap of masks pruned under two norms from the same weights;
7. statistics and the conclusion, phrased by what the numbers say, with the n behind every claim.

Outputs in the chosen folder: report.html (self-contained: figures embedded as data URIs, inline CSS),
report.md (links the PNGs), figures/*.png and report.json (every number the text quotes).

Layout: `build` runs the sections (`sections_*`, one module per report section) and `render` writes them;
`blocks` holds the tables, paragraphs and figures a section is made of, `plots` draws the figures,
`settings` and `stat_tables` hold the grouping of runs and the statistics rows the sections share.
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
