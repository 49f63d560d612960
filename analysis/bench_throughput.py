"""Training throughput (images/s) per model and grid, and the ratios a coarse-to-fine run lives on.

One optimizer step = forward, cross-entropy, backward, SGD update, on a device-resident synthetic
batch; timed after warm-up steps, with the device synchronised before the clock is read. For each
model and grid: fp32, then (on CUDA) bf16 autocast + channels_last, then optionally torch.compile.
Ratios printed: amp/fp32, compile/eager, and the coarse grid's images/s over the fine grid's (the
ideal is 4: a 2× coarser grid has 4× fewer pixels).

    python analysis/bench_throughput.py                     # the paper models on CUDA, the thesis CNN on CPU
    python analysis/bench_throughput.py --models cnn --grids 14,28 --steps 20
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from mres.models import build_model

GPU_MODELS = ["cnn", "mgnet[2,2,2,2]-[256]-Bl", "poly-g4", "resnet18"]


def images_per_second(name: str, grid: int, batch: int, steps: int, device: torch.device, amp: bool,
                      channels_last: bool, compile_: bool) -> float:
    torch.manual_seed(0)
    channels = 1 if name == "cnn" else 3
    model = build_model(name, {}, channels, 10, grid).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = torch.compile(model, dynamic=False) if compile_ else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, channels, grid, grid, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3 if not compile_ else 5):  # warm-up: cudnn's kernel choice, compilation
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return batch * steps / (time.perf_counter() - t0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", type=lambda t: t.split(";"), default=None,
                    help="model names separated by ';' (default: the papers' models on CUDA, the thesis CNN on CPU)")
    ap.add_argument("--grids", type=lambda t: [int(g) for g in t.split(",")], default=None,
                    help="coarse,fine grids (default 16,32; 14,28 for the CNN)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 50 on CUDA, 10 on CPU)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile")
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    models = args.models or (GPU_MODELS if cuda else ["cnn"])
    steps = args.steps or (50 if cuda else 10)
    name = torch.cuda.get_device_name(device) if cuda else f"cpu ({torch.get_num_threads()} threads)"
    print(f"== training throughput on {name}, batch {args.batch}, {steps} timed steps; images/s ==")
    modes = [("fp32", False, False, False)] + ([("bf16+cl", True, True, False)] if cuda else [("cl", False, True, False)])
    if args.compile:
        modes.append((modes[-1][0] + "+compile", modes[-1][1], modes[-1][2], True))
    print(f"{'model':<28}{'grid':>6}" + "".join(f"{m[0]:>18}" for m in modes) + "   ratios")
    for model in models:
        grids = args.grids or ([14, 28] if model == "cnn" else [16, 32])
        rates: dict[tuple[int, str], float] = {}
        for grid in grids:
            for label, amp, cl, comp in modes:
                rates[grid, label] = images_per_second(model, grid, args.batch, steps, device, amp, cl, comp)
            best = modes[-1][0]
            ratio = f"{modes[1][0]}/fp32 {rates[grid, modes[1][0]] / rates[grid, 'fp32']:.2f}×"
            if args.compile:
                ratio += f", compile/eager {rates[grid, best] / rates[grid, modes[1][0]]:.2f}×"
            print(f"{model:<28}{grid:>6}" + "".join(f"{rates[grid, m[0]]:>18,.0f}" for m in modes) + f"   {ratio}")
        c, f = grids[0], grids[-1]
        top = modes[1][0]
        print(f"{'':<28}{'':>6}   coarse/fine images/s ({c} vs {f}, {top}): {rates[c, top] / rates[f, top]:.2f}× "
              f"(pixels: {(f / c) ** 2:.0f}×)")


if __name__ == "__main__":
    main()
