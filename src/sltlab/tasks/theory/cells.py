"""A constructed ticket on one approximation-study cell, shared by the width and threshold experiments."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sltlab.tickets.construct import ConstructConfig

if TYPE_CHECKING:
    from sltlab.tasks.approx import ApproxRun


def construct_cell(run: ApproxRun, construct: ConstructConfig) -> dict[str, Any]:
    """run_cell for method construct, with the theory config's solver settings (same models and test inputs)."""
    from sltlab.tasks.approx import evaluate_pair, random_inputs
    from sltlab.tickets.construct import construct_ticket
    from sltlab.tickets.spec import build_model
    from sltlab.tickets.supermask import mask_density

    s = run.study
    target, source = build_model(run.target_spec()), build_model(run.source_spec())
    info = construct_ticket(source, target, construct)
    info.pop("per_layer_construct")
    m = evaluate_pair(source, target, random_inputs(run.seed, s.n_test, s.seq_len, s.d_model, "test"))
    return {**m, **info, "density": mask_density(source), "search_s": info["construct_s"]}
