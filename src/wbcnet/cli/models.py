"""`wbcnet models`: the models this install comes with (the zoo), with what was measured of each,
and the architectures `wbcnet train --model` builds."""
from __future__ import annotations

import json


def zoo_lines(measure: bool = True) -> list[str]:
    """One line per zoo model: name, file size, input px, parameters, speed here (the classifier
    alone, measured now beside a PIL decode yardstick) and the figures its card holds."""
    from ..models.zoo import ZOO

    lines, ref = [], None
    head = f"{'name':9s} {'file':>7s} {'input':>6s} {'params':>7s} {'speed here':>11s}  figures (test splits: accuracy, macro-F1)"
    for m in ZOO.values():
        if not m.installed:
            lines.append(f"{m.name:9s} not installed ({m.path} is missing)")
            continue
        meta = json.loads(m.path.with_suffix(".json").read_text())
        card = meta.get("card") or {}
        speed = "-"
        if measure:
            from ..inference.speed import classifier_speed, decode_reference
            from ..models.checkpoint import load_model

            model, loaded = load_model(m.name)
            ref = ref or decode_reference()
            speed = f"{classifier_speed(model, loaded):.0f} img/s"
            params = sum(p.numel() for p in model.parameters()) / 1e6
        else:
            params = card.get("parameters", 0) / 1e6
        figures = "; ".join(f"{f['set']} {f['accuracy']:.3f}, {f['macro_f1']:.3f}" for f in card.get("figures", [])) \
            or "not measured (see MODEL_CARD.md)"
        lines.append(f"{m.name:9s} {m.path.stat().st_size / 1e6:5.1f}MB {meta['img_size']:>4d}px {params:6.2f}M "
                     f"{speed:>11s}  {figures}")
        lines.append(f"{'':9s} for {m.purpose}")
    if ref:
        lines.append(f"speed here: the classifier alone as predict runs it (batch 64), beside PIL decoding a 224 px cell JPEG "
                     f"to 112 px on one thread in the same run: {ref:.0f} pictures/s. Whole commands: MODEL_CARD.md.")
    return [head, *lines]


def run_command(args) -> int:
    from ..models import TIMM_EXAMPLES, list_models

    print("Models wbcnet comes with (predict, evaluate, count, adapt, export and serve take --model NAME):")
    for line in zoo_lines(measure=not args.no_speed):
        print("  " + line)
    print("\nArchitectures to train (wbcnet train --model NAME):")
    for name, desc in list_models().items():
        print(f"  {name:12s} {desc}")
    print(f"  {'<timm name>':12s} any timm model, trained from scratch (e.g. {', '.join(TIMM_EXAMPLES)}); "
          f"--pretrained PATH loads local weights")
    return 0
