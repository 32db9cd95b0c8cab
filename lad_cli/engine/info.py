"""`lad info`: what a checkpoint holds and what its network costs."""
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..data.views import padded_hw
from ..distill.cache.store import file_sha256
from ..model.build import build_detector, load_checkpoint
from ..model.detector import PAADetector

PARTS = ("backbone", "fpn", "head")


def count_flops(model: PAADetector, hw: tuple[int, int]) -> dict[str, int]:
    """FLOPs (2 per multiply-accumulate, convolutions and matrix products, as
    torch.utils.flop_counter counts them) of one forward pass on a (1, 3, H, W) input: the
    total and per part of the network."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False, depth=2) as counter:
            model(torch.zeros(1, 3, *hw))
    finally:
        model.train(was_training)
    per_module = {name: sum(counts.values()) for name, counts in counter.get_flop_counts().items()}
    name = type(model).__name__
    return {"total": counter.get_total_flops(), **{part: per_module.get(f"{name}.{part}", 0) for part in PARTS}}


def checkpoint_info(path: Path) -> dict:
    """Architecture, classes, input size, anchor layout, parameters, FLOPs at the training size
    (the padded input of a size x max_size image) and how the network was trained."""
    path = Path(path)
    ckpt = load_checkpoint(path)
    model = build_detector(ckpt, path)
    config, layout = model.config, model.config.layout
    hw = padded_hw(ckpt["size"], ckpt["max_size"], layout.size_divisor)
    params = {"total": sum(p.numel() for p in model.parameters()),
              **{part: sum(p.numel() for p in getattr(model, part).parameters()) for part in PARTS}}
    flops = count_flops(model, hw)
    training = ckpt.get("training") or {"assignment": None, "note": "not recorded (a checkpoint written before lad recorded it)"}
    return {"path": str(path), "sha256": file_sha256(path), "bytes": path.stat().st_size, "arch": config.arch,
            "num_classes": config.num_classes, "categories": ckpt["categories"], "width": config.width,
            "head_depth": config.head_depth,
            "input": {"short_side": ckpt["size"], "max_side": ckpt["max_size"], "size_divisor": layout.size_divisor},
            "anchor_layout": {**layout.to_dict(), "anchor_side_in_strides": layout.octave_base_scale,
                              "anchors_at_flops_input": sum(layout.num_per_level(hw))},
            "parameters": params, "flops": {"input_hw": list(hw), **flops, "gflops": round(flops["total"] / 1e9, 3)},
            "assigner": (ckpt.get("assigner") or {}).get("name", "paa"), "training": training}


def format_info(info: dict) -> str:
    """The human-readable form: one `key: value` line per field, training fields indented."""
    t = info["training"]
    assignment = t.get("assignment") or {}
    source = ", ".join(f"{k} {v}" for k, v in assignment.items() if k != "source") if assignment else ""
    cats = ", ".join(c["name"] for c in info["categories"])
    p, f = info["parameters"], info["flops"]
    lines = [
        ("checkpoint", f"{info['path']} ({info['bytes'] / 2**20:.1f} MiB, sha256 {info['sha256'][:16]}...)"),
        ("architecture", f"{info['arch']} + FPN P3-P7 ({info['width']} channels) + head ({info['head_depth']} convs per tower)"),
        ("assigner", info["assigner"]),
        ("classes", f"{info['num_classes']}: {cats}"),
        ("input", f"shorter side {info['input']['short_side']}, longer at most {info['input']['max_side']}, "
                  f"padded to a multiple of {info['input']['size_divisor']}"),
        ("anchors", f"strides {info['anchor_layout']['strides']}, side {info['anchor_layout']['octave_base_scale']} x stride, "
                    f"centre offset {info['anchor_layout']['centre_offset']}"),
        ("parameters", f"{p['total'] / 1e6:.2f} M (backbone {p['backbone'] / 1e6:.2f} M, FPN {p['fpn'] / 1e6:.2f} M, "
                       f"head {p['head'] / 1e6:.2f} M)"),
        ("FLOPs", f"{f['gflops']} G at {f['input_hw'][0]}x{f['input_hw'][1]} (backbone {f['backbone'] / 1e9:.3f} G, "
                  f"FPN {f['fpn'] / 1e9:.3f} G, head {f['head'] / 1e9:.3f} G)"),
        ("trained on", f"{assignment['source']} assignments{f' ({source})' if source else ''}" if assignment else t["note"]),
    ]
    if assignment:
        lines.append(("schedule", f"{t['epoch']} of {t['epochs']} epochs, {t['iteration']} iterations, batch {t['batch']}, "
                                  f"lr {t['lr']:g}, seed {t['seed']}, views {t['views']}, backbone init "
                                  f"{t['weights'] or 'random'}"))
    return "\n".join(f"{k:>12}: {v}" for k, v in lines)
