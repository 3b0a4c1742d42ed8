"""``fcnquant equalize``: cross-layer equalization (and optional high-bias absorption) of a float ONNX model."""
from __future__ import annotations

import argparse
import json
import math


def register(sub) -> None:
    """Adds the ``equalize`` subcommand."""
    from fcnquant.cli._distributed import add_provider_option
    from fcnquant.cli._options import DATA_HELP
    from fcnquant.data import PRESETS

    p = sub.add_parser(
        "equalize", help="cross-layer equalization of a float model (before int8 with per-tensor weights)",
        description="Rescales the output channels of every Conv whose consumers can compensate exactly "
        "(Conv -> Relu (-> MaxPool) -> Conv chains, Concat slices, several consumer Convs, ResNet residual "
        "streams) so that each channel's weight range is balanced across the pair (Nagel et al. 2019), iterating "
        "chains until the scales converge. The model's function is unchanged. Convs that cannot be "
        "rescaled safely are listed with the reason. --absorb also moves each channel's always-positive part of "
        "the pre-activation (measured on calibration images) into the next layer's bias.",
    )
    p.add_argument("model", metavar="MODEL", help="float ONNX model (BatchNorm already folded into the Convs)")
    p.add_argument("--out", required=True, help="where to write the equalized model, e.g. model.eq.onnx")
    p.add_argument("--absorb", dest="absorb", action="store_true", help="also do high-bias absorption (needs images; "
                   "exact where the pre-activation stays above its bound)")
    p.add_argument("--no-absorb", dest="absorb", action="store_false", help="equalization only (default)")
    p.add_argument("--bound", default="min", choices=["min", "3sigma"], help="per-channel lower bound for --absorb: "
                   "the observed minimum (exact on those images) or mean - 3 std (default %(default)s)")
    p.add_argument("--absorb-padded", action="store_true", help="with --absorb, also absorb into zero-padding "
                   "consumers (changes the border outputs)")
    g = p.add_argument_group("images for --absorb")
    g.add_argument("--data", metavar="DIR", help=DATA_HELP.replace("VOC root", "VOC root or a folder of images", 1))
    g.add_argument("--split", default="train", help="split list (default %(default)s)")
    g.add_argument("--num-images", type=int, default=50, metavar="N", help="images (default %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="seed of the image selection (default %(default)s)")
    g.add_argument("--preset", choices=sorted(PRESETS), help="preprocessing preset (default: the model's own)")
    o = p.add_argument_group("iteration and output")
    o.add_argument("--tol", type=float, default=1e-6, help="stop a chain when a sweep's largest |log s| is below "
                   "this (default %(default)s)")
    o.add_argument("--max-sweeps", type=int, default=1000, help="at most this many sweeps per chain (default "
                   "%(default)s)")
    o.add_argument("--json", metavar="F", help="also write the full result (pairs, scales, skipped, ranges) as JSON")
    o.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    add_provider_option(g)
    p.set_defaults(func=run, absorb=False)


def run(args: argparse.Namespace) -> int:
    """Runs ``fcnquant equalize``; returns the exit status."""
    from fcnquant._io import all_or_nothing, atomic_write_text, check_outputs
    from fcnquant.data import DataConfig
    from fcnquant.errors import FcnquantError
    from fcnquant.execute import RunConfig
    from fcnquant.recover import EqualizeOptions, equalize

    check_outputs({"--out": args.out, "--json": args.json}, {"MODEL": args.model})
    if not math.isfinite(args.tol) or args.tol < 0:
        raise FcnquantError(f"--tol must be a finite number >= 0, got {args.tol}")
    if (args.absorb_padded or args.data) and not args.absorb:
        raise FcnquantError("--absorb-padded and --data only apply with --absorb")
    data = DataConfig(root=args.data, split=args.split, num_images=args.num_images, seed=args.seed,
                      preset=args.preset)
    options = EqualizeOptions(absorb=args.absorb, bound=args.bound, absorb_padded=args.absorb_padded, tol=args.tol,
                              max_sweeps=args.max_sweeps)
    with all_or_nothing():  # the model and the JSON: both or neither
        res = equalize(args.model, args.out, data, RunConfig(progress=not args.no_progress, provider=args.provider),
                       options)
        if args.json:
            atomic_write_text(args.json, json.dumps(res.to_dict(), indent=1))
    sweeps = [c["sweeps"] for c in res.chains]
    unconverged = sum(not c["converged"] for c in res.chains)
    before, after = res.median_precision()
    note = f", {unconverged} not converged" if unconverged else ""
    print(f"equalized {len(res.pairs)} pair(s) in {len(res.chains)} chain(s) "
          f"({min(sweeps, default=0)}-{max(sweeps, default=0)} sweeps{note}); "
          f"median pair precision (mean_i p1_i p2_i) {before:.3f} -> {after:.3f}")
    if res.absorb is not None:
        print(f"high-bias absorption ({res.absorb['bound']} over {res.absorb['images']} images): "
              f"{res.absorb['channels']} channel(s) in {res.absorb['pairs']} pair(s)")
    if res.max_rel_diff is not None:
        print(f"max |output diff| / max |output| vs the original: {res.max_rel_diff:.2e}")
    for s in res.skipped:
        print(f"not equalized: {s.node}: {s.reason}")
    print(f"wrote {res.path}")
    if args.json:
        print(f"wrote {args.json}")
    return 0
