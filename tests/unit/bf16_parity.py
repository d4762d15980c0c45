"""Op-by-op bf16 comparison of our Llama forward with transformers', on real weights (CPU).

Both models run one prompt: transformers (sdpa, bf16) whole, ours through the real paged-KV
extend path (model_driver.PagedModelRunner, the forward the server runs). Hooks record every
op's output on both sides, in execution order:

  isolated  each of our ops gets transformers' *input* to the same op (pre-hooks swap it in),
            so its output differs only by the op's own rounding. An elementwise op that
            rounds where transformers rounds is bit-exact; a GEMM or attention differs by
            accumulation order (about one ulp on some elements).
  drift     nothing swapped: how the differences grow through the layers.

--kernels runs RMSNorm, RoPE and SiluAndMul through their Triton kernels (TRITON_INTERPRET=1 on
the CPU, fp32->bf16 rounding to nearest as on the GPU) instead of the torch-native ops.

  python tests/unit/bf16_parity.py [--model GGUF] [--prompts 2 --len 32] [--mode isolated] [--kernels]

prints one line per op (bit-identical %, worst and mean ulp distance) and the first op whose
outputs are beyond bf16 rounding (worst > 1 ulp, or > 1 % of elements off for an elementwise op).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model_driver import PagedModelRunner, load_model  # noqa: E402

BF16 = torch.bfloat16
ELEMENTWISE = ("input_layernorm", "post_attention_layernorm", "rope", "act_fn", "norm", "embed")


def bf16_ulps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-element distance in bf16 ulps (neighbouring bf16 values are 1 apart)."""
    def key(t: torch.Tensor) -> torch.Tensor:
        i = t.to(BF16).view(torch.int16).to(torch.int32)
        return torch.where(i < 0, -32768 - i, i)

    return (key(a) - key(b)).abs()


@dataclass
class OpDiff:
    name: str
    identical: float  # fraction of bit-identical elements
    max_ulps: int
    mean_ulps: float

    @property
    def beyond_rounding(self) -> bool:
        elementwise = self.name.split(".")[-1].split(":")[0] in ELEMENTWISE
        return self.max_ulps > 1 or (elementwise and self.identical < 0.99)


def diff(name: str, ours: torch.Tensor, ref: torch.Tensor) -> OpDiff:
    d = bf16_ulps(ours.reshape(ref.shape), ref)
    return OpDiff(name, (d == 0).float().mean().item(), int(d.max().item()), d.float().mean().item())


def flat(t: torch.Tensor) -> torch.Tensor:
    """[1, T, ...] (transformers, batch of one) -> [T, -1] (ours)."""
    return t.reshape(t.shape[1], -1) if t.dim() == 3 else t


def capture_hf(hf: nn.Module, ids: List[int]) -> Dict[str, torch.Tensor]:
    """Run transformers on one prompt; every op's inputs/outputs as [T, -1] bf16."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    rec: Dict[str, torch.Tensor] = {}
    handles = []

    def out_hook(key: str, take_input: bool = False):
        def hook(mod, args, kwargs, out):
            if take_input:
                rec[key + ":in"] = flat(args[0] if args else kwargs["hidden_states"])
            rec[key] = out
        return hook

    m = hf.model
    handles.append(m.embed_tokens.register_forward_hook(out_hook("embed"), with_kwargs=True))
    handles.append(m.rotary_emb.register_forward_hook(out_hook("cos_sin"), with_kwargs=True))
    for i, layer in enumerate(m.layers):
        p = f"L{i}."
        handles.append(layer.register_forward_hook(out_hook(p + "layer", take_input=True), with_kwargs=True))
        for name, mod in (("input_layernorm", layer.input_layernorm), ("post_attention_layernorm", layer.post_attention_layernorm),
                          ("q_proj", layer.self_attn.q_proj), ("k_proj", layer.self_attn.k_proj),
                          ("v_proj", layer.self_attn.v_proj), ("o_proj", layer.self_attn.o_proj),
                          ("gate_proj", layer.mlp.gate_proj), ("up_proj", layer.mlp.up_proj),
                          ("down_proj", layer.mlp.down_proj)):
            handles.append(mod.register_forward_hook(out_hook(p + name, take_input=True), with_kwargs=True))
    handles.append(m.norm.register_forward_hook(out_hook("norm", take_input=True), with_kwargs=True))
    try:
        with torch.no_grad():
            logits = hf(torch.tensor([ids]), logits_to_keep=0).logits
    finally:
        for h in handles:
            h.remove()
    out = {k: flat(v) for k, v in rec.items() if k != "cos_sin" and isinstance(v, torch.Tensor)}
    out["logits"] = flat(logits)
    cos, sin = rec["cos_sin"]
    head_dim = cos.shape[-1]
    for i in range(len(m.layers)):
        p = f"L{i}."
        q, k = (out[p + n].view(1, len(ids), -1, head_dim).transpose(1, 2) for n in ("q_proj", "k_proj"))
        qr, kr = apply_rotary_pos_emb(q, k, cos, sin)
        out[p + "rope:q"], out[p + "rope:k"] = (t.transpose(1, 2).reshape(len(ids), -1) for t in (qr, kr))
    return out


class OursHooks:
    """Pre-hooks that swap transformers' inputs in (isolated mode) and hooks that record outputs."""

    def __init__(self, model: nn.Module, hf: Dict[str, torch.Tensor], isolated: bool) -> None:
        self.hf, self.isolated, self.diffs, self.handles = hf, isolated, [], []
        m = model.model
        n_layers = len(m.layers)
        self._add(m.embed_tokens, "embed", None, lambda o: [("embed", o)])
        for i, layer in enumerate(m.layers):
            p, a, mlp = f"L{i}.", layer.self_attn, layer.mlp
            prev_mlp, prev_res = (f"L{i - 1}.down_proj", f"L{i - 1}.post_attention_layernorm:in") if i else ("embed", None)
            self._add(layer.input_layernorm, p + "input_layernorm", lambda args, pm=prev_mlp, pr=prev_res:
                      (self.hf[pm],) if pr is None else (self.hf[pm], self.hf[pr]),
                      lambda o, p=p: [(p + "input_layernorm", o)] if isinstance(o, torch.Tensor) else
                      [(p + "input_layernorm", o[0]), (p + "input_layernorm:residual", o[1])])
            self._add(a.qkv_proj, p + "qkv_proj", lambda args, p=p: (self.hf[p + "input_layernorm"],),
                      lambda o, p=p, a=a: list(zip((p + "q_proj", p + "k_proj", p + "v_proj"),
                                                   o.split([a.q_size, a.kv_size, a.kv_size], -1))))
            self._add(a.attn, p + "attn", lambda args, p=p: (self.hf[p + "rope:q"], self.hf[p + "rope:k"], self.hf[p + "v_proj"],
                                                            *args[3:]),
                      lambda o, p=p: [(p + "attn", o)])
            self._add(a.o_proj, p + "o_proj", lambda args, p=p: (self.hf[p + "o_proj:in"],), lambda o, p=p: [(p + "o_proj", o)])
            self._add(layer.post_attention_layernorm, p + "post_attention_layernorm",
                      lambda args, p=p: (self.hf[p + "o_proj"], self.hf[p + "layer:in"]),
                      lambda o, p=p: [(p + "post_attention_layernorm", o[0]), (p + "post_attention_layernorm:residual", o[1])])
            self._add(mlp.gate_up_proj, p + "gate_up_proj", lambda args, p=p: (self.hf[p + "post_attention_layernorm"],),
                      lambda o, p=p: list(zip((p + "gate_proj", p + "up_proj"), o.chunk(2, -1))))
            self._add(mlp.act_fn, p + "act_fn", lambda args, p=p: (torch.cat([self.hf[p + "gate_proj"], self.hf[p + "up_proj"]], -1),),
                      lambda o, p=p: [(p + "act_fn", o)])
            self._add(mlp.down_proj, p + "down_proj", lambda args, p=p: (self.hf[p + "down_proj:in"],),
                      lambda o, p=p: [(p + "down_proj", o)])
        last = f"L{n_layers - 1}."
        self._add(m.norm, "norm", lambda args: (self.hf[last + "down_proj"], self.hf[last + "post_attention_layernorm:in"]),
                  lambda o: [("norm", o[0]), ("norm:residual", o[1])])
        self._add(model.lm_head, "lm_head", lambda args: (self.hf["norm"],), lambda o: [("logits", o)])
        self._rope_calls = 0
        self._add(m.rotary_emb, "rope", lambda args: (args[0], self.hf[self._rope_key() + "q_proj"],
                                                      self.hf[self._rope_key() + "k_proj"]),
                  lambda o: self._rope_out(o))

    def _rope_key(self) -> str:
        return f"L{self._rope_calls}."

    def _rope_out(self, o: Tuple[torch.Tensor, torch.Tensor]) -> List[Tuple[str, torch.Tensor]]:
        p = self._rope_key()
        self._rope_calls += 1
        return [(p + "rope:q", o[0]), (p + "rope:k", o[1])]

    def _add(self, mod: nn.Module, name: str, inputs: Optional[Callable], outputs: Callable) -> None:
        def pre(mod, args):
            if self.isolated and inputs is not None:
                return tuple(t.clone() if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in inputs(args))
            return None

        def post(mod, args, out):
            for key, t in outputs(out):
                ref = self.hf.get(self._ref_key(key))
                if ref is not None:
                    self.diffs.append(diff(key, t, ref))

        self.handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]

    @staticmethod
    def _ref_key(key: str) -> str:
        """Which transformers tensor an output of ours is compared with (default: the same key)."""
        p, _, op = key.rpartition(".")
        p = p + "." if p else ""
        return p + {"attn": "o_proj:in", "act_fn": "down_proj:in", "input_layernorm:residual": "layer:in",
                    "post_attention_layernorm:residual": "post_attention_layernorm:in",
                    "norm:residual": "norm:in"}.get(op, op)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def use_kernels_on_cpu() -> None:
    """RMSNorm, RoPE and SiluAndMul take their Triton kernel path on CPU tensors (interpreter)."""
    os.environ["TRITON_INTERPRET"] = "1"
    import importlib.util

    try:
        import sglserve_kernels  # noqa: F401
    except ImportError:  # not installed: map the repo's kernels/ folder, as tests/kernels/conftest.py does
        root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "kernels")
        spec = importlib.util.spec_from_file_location("sglserve_kernels", os.path.join(root, "__init__.py"),
                                                      submodule_search_locations=[root])
        module = importlib.util.module_from_spec(spec)
        sys.modules["sglserve_kernels"] = module
        spec.loader.exec_module(module)
    from sglserve_kernels.testing import interpreter_bf16_round_to_nearest
    from sglserve.layers.activation import SiluAndMul
    from sglserve.layers.custom_op import get_kernel
    from sglserve.layers.layernorm import RMSNorm
    from sglserve.layers.rotary_embedding import RotaryEmbedding

    interpreter_bf16_round_to_nearest()
    for cls in (RMSNorm, RotaryEmbedding, SiluAndMul):
        cls.forward = lambda self, x, *a, **k: self.forward_cuda(get_kernel(self.kernel_name), x, *a, **k)


def load_pair(model_path: str):
    """(transformers model, our model, our ModelConfig), both bf16 on the CPU."""
    from transformers import AutoModelForCausalLM

    folder, name = (os.path.dirname(model_path), os.path.basename(model_path)) if model_path.endswith(".gguf") else (model_path, None)
    hf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=BF16, attn_implementation="sdpa").eval()
    ours, config = load_model(model_path, dtype="bfloat16")
    return hf, ours, config


def compare(hf: nn.Module, ours: nn.Module, config, ids: List[int], isolated: bool) -> List[OpDiff]:
    ref = capture_hf(hf, ids)
    runner = PagedModelRunner(ours, config, max_context_len=max(512, len(ids) + 1), num_slots=max(4096, len(ids) + 64))
    hooks = OursHooks(ours, ref, isolated)
    try:
        runner.extend([runner.new_req()], [ids], return_all_logits=True)
    finally:
        hooks.remove()
    return hooks.diffs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="GGUF file or HF folder (default: the SmolLM2 GGUF)")
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--len", type=int, default=32)
    ap.add_argument("--mode", choices=["isolated", "drift"], default="isolated")
    ap.add_argument("--kernels", action="store_true", help="Triton RMSNorm/RoPE/SiluAndMul under the interpreter")
    ap.add_argument("--all", action="store_true", help="print every op, not only layer 0, the last layer and the head")
    args = ap.parse_args()
    if args.kernels:
        use_kernels_on_cpu()
    from sglserve.server_args import default_model_path

    hf, ours, config = load_pair(args.model or default_model_path())
    g = torch.Generator().manual_seed(0)
    last = f"L{config.num_hidden_layers - 1}."
    for n in range(args.prompts):
        ids = torch.randint(10, 4000, (args.len,), generator=g).tolist()
        diffs = compare(hf, ours, config, ids, args.mode == "isolated")
        print(f"prompt {n} ({args.len} tokens, {args.mode}{', kernels' if args.kernels else ''}):")
        for d in diffs:
            if args.all or d.beyond_rounding or not d.name.startswith("L") or d.name.startswith(("L0.", last)):
                flag = "  <- beyond bf16 rounding" if d.beyond_rounding else ""
                print(f"  {d.name:42s} identical {d.identical:7.2%}  max {d.max_ulps:5d} ulp  mean {d.mean_ulps:.3f}{flag}")
        first = next((d.name for d in diffs if d.beyond_rounding), None)
        print(f"  first op beyond bf16 rounding: {first}")


if __name__ == "__main__":
    main()
