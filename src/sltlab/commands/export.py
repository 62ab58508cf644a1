"""`sltlab export RUN_ID -o t.slt`: turn a stored run's checkpoint into a compact, checked ticket artifact."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Export a finished run as a ticket artifact (.slt): the model spec and seed, the masks entropy-coded near
their binary entropy, and the free floats (norm gain/bias, scales, a trained head), with a SHA-256.
No weight is stored: loading regenerates them from the seed and gives outputs bit-identical to the
run's model.

Works for every run that saved <store dir>/artifacts/<run id>/ticket.safetensors (approx, glue, lm runs).
A dense run exports all its weights as floats, which shows what the ticket saves.
"""

EPILOG = """\
examples:
  sltlab export lm-3f2a9c -o shakespeare.slt
  sltlab export approx-0b1c2d3e4f5a -o mha.slt --store runs/full.db --floats float16
  sltlab inspect shakespeare.slt --verify
  sltlab export lm-3f2a9c -o - | ssh host 'cat > t.slt'   # the bytes on standard output
  python -c "import sltlab; m = sltlab.load_ticket('shakespeare.slt')"
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a run's ticket as a compact .slt artifact",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_id", help="run id (or a unique prefix) in the store")
    p.add_argument("-o", "--output", required=True, help="the .slt file to write (atomically; - for standard output)")
    p.add_argument("--store", default="runs/sltlab.db", help="SQLite store (default runs/sltlab.db)")
    p.add_argument(
        "--floats",
        default="float32",
        choices=("float32", "float16", "bfloat16"),
        help="storage of the free floats: float32 is bit-exact; float16/bfloat16 are exact to "
        "their rounded values (default float32)",
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    import sys

    from sltlab.errors import ArtifactError
    from sltlab.runs.checks import check_output_file, check_store_file
    from sltlab.runs.io import STDOUT, emit
    from sltlab.runs.store import Store
    from sltlab.tickets.artifact import decode_ticket, export_ticket
    from sltlab.tickets.checkpoint import load_checkpoint

    check_output_file("--output", args.output, stdout_ok=True)
    check_store_file("--store", args.store)
    with Store(args.store, readonly=True) as store:
        rec = store.get(args.run_id)
        ckpt = store.artifact_path(rec.run_id) / "ticket.safetensors"
    if not ckpt.is_file():
        raise ArtifactError(
            f"run {rec.run_id} ({rec.status}) saved no checkpoint at {ckpt}; only runs that wrote "
            "ticket.safetensors (sltlab.tickets.checkpoint.save_checkpoint) can be exported"
        )
    model, spec = load_checkpoint(ckpt)
    blob = export_ticket(model, spec, None, floats=args.floats)
    sizes = decode_ticket(blob, args.output).sizes
    emit(args.output, blob)
    # with the ticket on standard output, what was written goes to stderr
    out = sys.stderr if args.output == STDOUT else sys.stdout
    print(
        f"wrote {args.output}: {len(blob):,} bytes (header {sizes['header']:,}, masks {sizes['masks']:,}, "
        f"floats {sizes['floats']:,}, checksum {sizes['checksum']}) from run {rec.run_id}", file=out
    )
    if args.output != STDOUT:
        print(f"check it with `sltlab inspect {args.output} --verify`; load it with sltlab.load_ticket()")
    return 0
