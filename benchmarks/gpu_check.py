"""What only a GPU can measure, in one script of at most 8 minutes on one H100.

Usage::

    python benchmarks/gpu_check.py --out gpu_check.json     # on a machine with a CUDA GPU
    python benchmarks/gpu_check.py --tiny                   # the same code on the CPU, tiny shapes (the tests)

Four checks, each reported on its own (one failing does not hide the others):

``encode``
    bf16 forward throughput of randomly initialised models of real shapes, Qwen2-VL-2B (Qwen2
    1.5B language model, 32-layer 1280-wide vision tower) and LLaVA-NeXT-7B (Mistral-7B, CLIP
    ViT-L/14 at 336 px): text sequences per second through the language model and images (tiles)
    per second through the vision tower, with model FLOPs utilisation = model FLOPs per second /
    the GPU's peak (``--peak-tflops``, default 989: H100 SXM dense bf16). Model FLOPs count
    2 x parameters per token plus attention's 4 x layers x sequence x width.
``train_memory``
    peak GPU memory of one LoRA (r=16 on the attention and MLP projections) + GradCache step
    (:class:`mmembed.training.gradcache.GradCache`, chunks of 16, gradient checkpointing) at global
    batch 256 on the LLaVA-NeXT-7B language model shape, 128-token queries and candidates.
``golden``
    the released MM-Embed's golden vectors (``tests/fixtures/mmembed_release``, the tiny release
    checkpoint) encoded on CUDA in float32 and bfloat16, against the CPU float32 vectors: the
    smallest cosine of each.
``topk``
    the streamed exact top-k (:class:`mmembed.index.exact.ExactIndex`) with its matrix products on
    the GPU against the CPU: time of each, share of identical top-50 lists, largest score difference.

``--tiny`` shrinks every shape (a few layers of width 64) and runs on the CPU, so the suite keeps
the script working; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "fixtures" / "mmembed_release" / "golden.json"

#: (language model config, vision config) of the two families, full size and tiny.
SHAPES = {
    "qwen2-vl-2b": ({"kind": "qwen2", "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                     "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151_936},
                    {"kind": "qwen2_vl", "depth": 32, "embed_dim": 1280, "num_heads": 16, "mlp_ratio": 4,
                     "hidden_size": 1536, "patches": 1024}),
    "llava-next-7b": ({"kind": "mistral", "hidden_size": 4096, "intermediate_size": 14_336, "num_hidden_layers": 32,
                       "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32_000},
                      {"kind": "clip", "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                       "num_attention_heads": 16, "image_size": 336, "patch_size": 14}),
}
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 1000}
TINY_VISION = {"depth": 2, "embed_dim": 32, "num_heads": 4, "hidden_size": 64, "patches": 64,
               "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": 56}


def _torch():
    import torch

    return torch


def language_model(spec: dict, tiny: bool, device: str):
    """A randomly initialised decoder of the given shape, bf16, built on ``device``."""
    torch = _torch()
    from transformers import MistralConfig, MistralModel, Qwen2Config, Qwen2Model

    spec = {**spec, **(TINY if tiny else {})}
    kind = spec.pop("kind")
    config_cls, model_cls = (Qwen2Config, Qwen2Model) if kind == "qwen2" else (MistralConfig, MistralModel)
    config = config_cls(**spec, max_position_embeddings=4096)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            return model_cls(config).eval()
    finally:
        torch.set_default_dtype(previous)


def vision_tower(spec: dict, tiny: bool, device: str):
    """(model, a batch-maker returning (inputs, images), FLOPs per image) of the vision tower."""
    torch = _torch()
    spec = {**spec, **({k: v for k, v in TINY_VISION.items()} if tiny else {})}
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            if spec["kind"] == "clip":
                from transformers import CLIPVisionConfig, CLIPVisionModel

                config = CLIPVisionConfig(hidden_size=spec["hidden_size"], intermediate_size=spec["intermediate_size"],
                                          num_hidden_layers=spec["num_hidden_layers"],
                                          num_attention_heads=spec["num_attention_heads"],
                                          image_size=spec["image_size"], patch_size=spec.get("patch_size", 14))
                model = CLIPVisionModel(config).eval()
                tokens = (config.image_size // config.patch_size) ** 2 + 1

                def batch(n: int):
                    return {"pixel_values": torch.randn(n, 3, config.image_size, config.image_size,
                                                        dtype=torch.bfloat16, device=device)}, n
            else:
                from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig
                from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

                config = Qwen2VLVisionConfig(depth=spec["depth"], embed_dim=spec["embed_dim"],
                                             num_heads=spec["num_heads"], mlp_ratio=spec["mlp_ratio"],
                                             hidden_size=spec["hidden_size"])
                model = Qwen2VisionTransformerPretrainedModel(config).eval()
                side = int(spec["patches"] ** 0.5)
                tokens = side * side
                patch_values = 3 * config.temporal_patch_size * config.patch_size ** 2

                def batch(n: int):
                    grid = torch.tensor([[1, side, side]] * n, device=device)
                    return {"hidden_states": torch.randn(n * tokens, patch_values, dtype=torch.bfloat16,
                                                         device=device),
                            "grid_thw": grid}, n
    finally:
        torch.set_default_dtype(previous)
    params = sum(p.numel() for p in model.parameters())
    width = spec.get("embed_dim", spec["hidden_size"]) if spec["kind"] != "clip" else spec["hidden_size"]
    layers = spec.get("depth", spec.get("num_hidden_layers"))
    return model, batch, 2 * params * tokens + 4 * layers * tokens * tokens * width


def _timed(fn, device: str, repeats: int) -> float:
    torch = _torch()
    fn()  # warm-up (kernels, allocator)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats


def check_encode(tiny: bool, device: str, peak_tflops: float) -> dict:
    torch = _torch()
    out = {}
    batch, seq, images = (4, 16, 2) if tiny else (64, 256, 32)
    repeats = 1 if tiny else 5
    for name, (lm_spec, vision_spec) in SHAPES.items():
        model = language_model(lm_spec, tiny, device)
        params = sum(p.numel() for p in model.parameters()) - model.embed_tokens.weight.numel()
        cfg = model.config
        ids = torch.randint(0, cfg.vocab_size, (batch, seq), device=device)
        with torch.no_grad():
            seconds = _timed(lambda m=model, i=ids: m(input_ids=i).last_hidden_state[:, -1], device, repeats)
        flops = batch * seq * (2 * params + 4 * cfg.num_hidden_layers * seq * cfg.hidden_size)
        text = {"sequences_per_s": round(batch / seconds, 1), "tokens": seq, "batch": batch,
                "tflops": round(flops / seconds / 1e12, 3), "mfu": round(flops / seconds / (peak_tflops * 1e12), 4)}
        del model
        vision, make, per_image = vision_tower(vision_spec, tiny, device)
        inputs, n = make(images)
        with torch.no_grad():
            seconds = _timed(lambda v=vision, x=inputs: v(**x), device, repeats)
        out[name] = {"text": text, "vision": {"images_per_s": round(n / seconds, 1), "batch": n,
                                              "tflops": round(per_image * n / seconds / 1e12, 3),
                                              "mfu": round(per_image * n / seconds / (peak_tflops * 1e12), 4)}}
        del vision
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return out


def check_train_memory(tiny: bool, device: str) -> dict:
    """Peak memory of one LoRA + GradCache step at global batch 256 on the 7B language model shape."""
    torch = _torch()
    from peft import LoraConfig, get_peft_model

    from mmembed.training.gradcache import GradCache

    global_batch, seq, chunk = (32, 16, 8) if tiny else (256, 128, 16)
    model = language_model(SHAPES["llava-next-7b"][0], tiny, device)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    model.train()
    vocab = model.config.vocab_size

    def embed(ids):
        hidden = model(input_ids=ids).last_hidden_state[:, -1].float()
        return torch.nn.functional.normalize(hidden, dim=-1)

    def loss_fn(q, c):
        return torch.nn.functional.cross_entropy(q @ c.T / 0.05, torch.arange(q.shape[0], device=q.device))

    queries = torch.randint(0, vocab, (global_batch, seq), device=device)
    candidates = torch.randint(0, vocab, (global_batch, seq), device=device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    started = time.perf_counter()
    loss = GradCache(embed, embed, loss_fn, chunk_size=chunk).step(queries, candidates)
    result = {"global_batch": global_batch, "chunk": chunk, "tokens": seq, "loss": round(float(loss), 4),
              "seconds": round(time.perf_counter() - started, 1),
              "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    if device.startswith("cuda"):
        result.update(weights_gib=round(before / 2**30, 2),
                      peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2))
    return result


def check_golden(tiny: bool, device: str) -> dict:
    """Cosine of the release's golden cases on ``device`` (float32 and bfloat16) against the CPU in float32."""
    import tempfile

    from PIL import Image

    from mmembed.encoders.base import Item
    from mmembed.encoders.registry import load_encoder
    from mmembed.testing.tiny_release import build_tiny_release

    cases = json.loads(GOLDEN.read_text(encoding="utf-8"))["cases"]
    with tempfile.TemporaryDirectory() as tmp:
        release = build_tiny_release(Path(tmp) / "MM-Embed")

        def vectors(**settings) -> np.ndarray:
            encoders = {length: load_encoder(release.path, nvembed_config=release.nvembed_config, max_length=length,
                                             **settings) for length in {c["max_length"] for c in cases}}
            out = []
            for case in cases:
                encoder = encoders[case["max_length"]]
                image = Image.open(GOLDEN.parent / case["image"]).convert("RGB") if case["image"] else None
                item = Item(case["id"], case["text"], image)
                if case["role"] == "query":
                    out.append(encoder.encode_queries([item], case["instruction"])[0])
                else:
                    out.append(encoder.encode_candidates([item])[0])
            return np.array(out, dtype=np.float64)

        cpu = vectors(device="cpu")
        golden = np.array([c["vector"] for c in cases], dtype=np.float64)
        result = {"cases": len(cases), "cpu_vs_golden_min_cosine": _min_cosine(cpu, golden)}
        for dtype in ("float32", "bfloat16"):
            got = vectors(device=device, dtype=dtype)
            result[f"{device}_{dtype}_vs_cpu_min_cosine"] = _min_cosine(got, cpu)
    return result


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))


def check_topk(tiny: bool, device: str) -> dict:
    from mmembed.index.exact import ExactIndex

    n, dim, nq, k = (5_000, 32, 300, 50) if tiny else (1_000_000, 384, 4_096, 50)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    queries = rng.standard_normal((nq, dim)).astype(np.float32)
    ids = [f"{i}" for i in range(n)]
    times, results = {}, {}
    for where in ("cpu", device):
        index = ExactIndex.from_vectors(ids, vectors, device=where, memory_limit="4GB")
        started = time.perf_counter()
        results[where] = index.search(queries, k)
        times[where] = round(time.perf_counter() - started, 2)
    cpu, other = results["cpu"], results[device]
    same = float(np.mean([list(a) == list(b) for a, b in zip(cpu.ids, other.ids)]))
    return {"candidates": n, "dim": dim, "queries": nq, "k": k, "seconds": times,
            "identical_lists": same, "max_score_difference": float(np.max(np.abs(cpu.scores - other.scores)))}


CHECKS = {"encode": check_encode, "train_memory": check_train_memory, "golden": check_golden, "topk": check_topk}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU (for the tests)")
    p.add_argument("--only", help="comma-separated checks: " + ", ".join(CHECKS))
    p.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak, for MFU")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    torch = _torch()
    device = "cpu" if args.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU here; run with --tiny for the CPU smoke run", file=sys.stderr)
        return 2
    names = args.only.split(",") if args.only else list(CHECKS)
    results: dict = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu (tiny shapes)",
                     "tiny": args.tiny}
    started = time.perf_counter()
    for name in names:
        began = time.perf_counter()
        try:
            if name == "encode":
                results[name] = check_encode(args.tiny, device, args.peak_tflops)
            else:
                results[name] = CHECKS[name](args.tiny, device)
        except Exception as e:  # one check failing must not hide the others' figures
            results[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
        results[name]["check_seconds"] = round(time.perf_counter() - began, 1)
        print(f"{name}: {json.dumps(results[name], default=str)[:2000]}", flush=True)
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1, default=str))
    failed = [n for n in names if "error" in results[n]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
