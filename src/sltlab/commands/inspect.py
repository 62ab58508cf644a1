"""`sltlab inspect t.slt [--verify]`: what a ticket holds and how close its masks are to their entropy."""

from __future__ import annotations

import argparse
import math

DESCRIPTION = """\
Show a ticket artifact's parts (header, masks, floats, checksum) in bytes, each mask's density and the bits
per weight it costs beside the binary entropy H(density), the floor for a static per-tensor model.

--verify rebuilds the model (weights from the seed, stored masks and floats) and checks that its output on
the seeded probe input recorded at export is bit-identical (SHA-256 of the output). Bit-identity holds on the
same torch build and CPU kind; elsewhere the report shows the largest difference on the stored sample.
Exit status: 0 if the file is sound (and, with --verify, bit-identical), 1 if verification fails, 2 if the
file is corrupted or unreadable.
"""

EPILOG = """\
examples:
  sltlab inspect shakespeare.slt
  sltlab inspect shakespeare.slt --verify
  sltlab inspect shakespeare.slt --masks 0      # totals only
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="sizes and bits/weight of a .slt ticket; --verify rebuilds bit-exactly",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "ticket", help="a .slt file written by `sltlab export` or sltlab.tickets.artifact.export_ticket"
    )
    p.add_argument("--verify", action="store_true", help="rebuild the model and check its output bit for bit")
    p.add_argument("--masks", type=int, default=40, metavar="N", help="list at most N masks (default 40)")
    p.set_defaults(func=main)


def describe(parts) -> list[str]:  # noqa: ANN001 - TicketParts, imported lazily
    """The report's lines (also used by the benchmark)."""
    from sltlab.tickets.artifact import binary_entropy

    spec, h, sizes = parts.spec, parts.header, parts.sizes
    m = spec.model
    lines = [
        f"format v{parts.version} ticket, {sizes['total']:,} bytes (sltlab {h.get('sltlab_version')}, "
        f"torch {h.get('torch_version')})",
        f"model: {spec.arch} d={m.d_model} heads={m.n_heads} layers={m.n_layers} norm={m.norm.name} "
        f"vocab={m.vocab_size}; init {spec.init.scheme} seed={spec.init.seed}"
        + (
            f"; mask {spec.mask.method} keep={spec.mask.keep} scale={spec.mask.scale}" + _variant_text(spec.mask)
            if spec.mask
            else "; no mask (dense)"
        ),
        *_fold_lines(m),
        "parts: " + " | ".join(f"{k} {sizes[k]:,} B" for k in ("header", "masks", "floats", "checksum")),
    ]
    n_total = sum(t.numel() for t in parts.masks.values())
    if parts.masks:
        ones = sum(int(t.sum()) for t in parts.masks.values())
        coded_bits = 8 * sizes["masks"]
        floor = sum(t.numel() * binary_entropy(float(t.float().mean())) for t in parts.masks.values())
        lines.append(
            f"masks: {len(parts.masks)} tensors, {n_total:,} weights, density {ones / n_total:.4f}: "
            f"{coded_bits / n_total:.4f} bits/weight; floor sum n*H(p) per tensor {floor / n_total:.4f}, "
            f"H(density) {binary_entropy(ones / n_total):.4f}; ratio to floor "
            f"{coded_bits / floor if floor else math.nan:.4f} (bit-packing costs 1 bit/weight)"
        )
    n_floats = sum(t.numel() for t in parts.floats.values())
    dtypes = sorted({e["dtype"] for e in h.get("floats", [])})
    lines.append(f"floats: {len(parts.floats)} tensors, {n_floats:,} values ({', '.join(dtypes) or '-'})")
    return lines


def _fold_lines(m) -> list[str]:  # noqa: ANN001 - ModelConfig, imported lazily
    """A folded source: how its layers share random weights and masks (nothing for an unfolded one)."""
    if not m.folded:
        return []
    per = m.n_layers // m.stages
    masks = "one mask per layer" if m.mask_sharing == "unshared" else "one mask per stage"
    return [f"folded: {m.stages} stage(s) x {per} layers share one random block each ({masks}); "
            f"loading regenerates {m.stages} block(s) of weights, not {m.n_layers}"]


def _variant_text(mask) -> str:  # noqa: ANN001 - SupermaskConfig, imported lazily
    out = f" coats={mask.coats}" if mask.coats > 1 else ""
    if mask.frozen_pruned or mask.frozen_kept:
        out += f" frozen pruned={mask.frozen_pruned} kept={mask.frozen_kept} (seed {mask.frozen_seed})"
    if out:
        # the coder stores nested coats and skips frozen weights, so the per-tensor floors below are not its cost
        out += "; masks = where any coat keeps"
    return out


def mask_table(parts, limit: int) -> list[str]:  # noqa: ANN001
    """Per mask: shape, density and its entropy floor. (All masks share one coded stream, whose measured
    size is the total above; per-tensor bits are not separable, so the floor n * H(p) is listed.)"""
    from sltlab.tickets.artifact import binary_entropy

    rows = [f"  {'mask':<44} {'shape':>12} {'density':>8} {'H(p)':>7} {'floor B':>9}"]
    for name, t in list(parts.masks.items())[:limit]:
        p = float(t.float().mean())
        hp = binary_entropy(p)
        shape = "x".join(map(str, t.shape))
        rows.append(f"  {name:<44} {shape:>12} {p:8.4f} {hp:7.4f} {t.numel() * hp / 8:9.0f}")
    if len(parts.masks) > limit:
        rows.append(f"  ... {len(parts.masks) - limit} more")
    return rows if limit > 0 else []


def main(args: argparse.Namespace) -> int:
    from sltlab.errors import ConfigError
    from sltlab.tickets.artifact import read_ticket, verify_parts

    if args.masks < 0:
        raise ConfigError("--masks", f"{args.masks} masks", "an integer >= 0 (0 = totals only)")

    parts = read_ticket(args.ticket)
    print(f"{args.ticket}: " + "\n".join(describe(parts)))
    for line in mask_table(parts, args.masks):
        print(line)
    if not args.verify:
        return 0
    result = verify_parts(parts, args.ticket)
    if result["bit_identical"]:
        print(
            f"verify: OK, rebuilt outputs are bit-identical to the exported model's "
            f"(probe sha256 {parts.probe['sha256'][:16]}...)"
        )
        return 0
    print(
        f"verify: FAILED, rebuilt outputs differ from the exported model's (max |diff| on the stored sample "
        f"{result['max_abs_diff']:.3g}; a tiny difference means another torch build or CPU kind, "
        "a large one a "
        "different model)"
    )
    return 1
