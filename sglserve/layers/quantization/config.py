"""Which quantization a model runs with: read from `--quantization` and the checkpoint's
`config.json` `quantization_config`, refused early when we cannot run it.

Torch-free on purpose: the launcher checks a checkpoint before it starts any child process
or reads any weight, so a refusal comes within a second, as one line.

Implemented (names as in SGLang and vLLM):
- `fp8`: on an unquantized checkpoint (`--quantization fp8`), weights are quantized at load to
  float8_e4m3fn with one scale per output channel, activations per token at run time. An FP8
  checkpoint (`quant_method: "fp8"`) either has `weight_block_size` [n, k] (Qwen3-FP8,
  DeepSeek: a `weight_scale_inv` per n x k block, activations per token in groups of k) or is
  per-tensor (a scalar `weight_scale`, `input_scale` when `activation_scheme` is static).
- `compressed-tensors` with float8 weights (RedHatAI's "FP8" and "FP8-dynamic" checkpoints,
  `format: "float-quantized"`): `weight_scale` per tensor, per channel or per block;
  activations dynamic per token, static per tensor (`input_scale`), or none (W8A16).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from typing import Any, Dict, Optional, Sequence, Tuple

SUPPORTED_METHODS = ("fp8", "compressed-tensors")
# Methods SGLang / vLLM know that we do not implement: refused by name, never loaded wrong
KNOWN_UNSUPPORTED = (
    "awq", "awq_marlin", "gptq", "gptq_marlin", "gptq_marlin_24", "marlin", "bitsandbytes", "aqlm", "hqq",
    "eetq", "exl2", "squeezellm", "deepspeedfp", "fbgemm_fp8", "modelopt", "modelopt_fp4", "mxfp4", "quark",
    "qqq", "tpu_int8", "w8a8_int8", "w8a8_fp8", "moe_wna16", "petit_nvfp4", "torchao", "auto-round", "gguf",
    "ptpc_fp8", "experts_int8", "ipex", "inc", "fp_quant", "higgs", "bitnet", "vptq", "spqr",
)
FP8_FORMATS = ("e4m3", "float8_e4m3fn")


class QuantizationError(ValueError):
    """A quantization we cannot run; the message is one line naming the method and what is supported."""


def supported_text() -> str:
    return "supported: fp8 (unquantized or FP8 checkpoints), compressed-tensors (float8 checkpoints)"


def check_method_name(name: Optional[str]) -> None:
    """`--quantization NAME`: None or a supported method, else QuantizationError."""
    if name is None or name in SUPPORTED_METHODS:
        return
    what = "is not implemented in sglserve" if name.lower() in KNOWN_UNSUPPORTED else "is not a known quantization method"
    raise QuantizationError(f"--quantization={name!r} {what}; {supported_text()}")


@dataclass(frozen=True)
class Fp8Scheme:
    """How the linear layers' weights and activations are quantized to FP8 E4M3."""

    method: str  # "fp8" or "compressed-tensors": where the scheme came from
    serialized: bool  # the checkpoint holds fp8 weights and their scales (else: quantize at load)
    weight_strategy: str  # "tensor" | "channel" | "block"
    block_size: Optional[Tuple[int, int]] = None  # [n, k] for "block"
    activation: Optional[str] = "dynamic"  # "dynamic" | "static" (input_scale) | None (weights only)
    activation_strategy: str = "token"  # "token" | "tensor" | "group" (1 x k groups, with blocks)
    ignore: Tuple[str, ...] = ()  # checkpoint module names (or "re:<regex>") left unquantized
    weight_scale_name: str = "weight_scale"  # the checkpoint tensor: weight_scale or weight_scale_inv

    def for_random_weights(self) -> "Fp8Scheme":
        """--load-format dummy: no checkpoint scales to read, so quantize the random weights at load."""
        strategy = "block" if self.weight_strategy == "block" else "channel"
        activation = None if self.activation is None else "dynamic"
        act_strategy = "group" if strategy == "block" else "token"
        return replace(self, serialized=False, weight_strategy=strategy, activation=activation,
                       activation_strategy=act_strategy, weight_scale_name="weight_scale")

    def describe(self) -> str:
        w = f"block {list(self.block_size)}" if self.block_size else f"per {self.weight_strategy}"
        a = "none" if self.activation is None else f"{self.activation} per {self.activation_strategy}"
        origin = "fp8 checkpoint" if self.serialized else "quantized at load"
        return f"{self.method}: fp8_e4m3 weights ({w}, {origin}), activations: {a}"


def read_checkpoint_quant_config(model_path: str) -> Optional[Dict[str, Any]]:
    """`quantization_config` of the folder's config.json (None: no config.json, a GGUF, or none)."""
    path = model_path if model_path.endswith(".json") else os.path.join(model_path, "config.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        config = json.load(f)
    qc = config.get("quantization_config") or config.get("compression_config")
    return qc if isinstance(qc, dict) else None


def _fp8_checkpoint_scheme(qc: Dict[str, Any]) -> Fp8Scheme:
    fmt = qc.get("fmt", "e4m3")
    if fmt not in FP8_FORMATS:
        raise QuantizationError(f"quant_method 'fp8' with fmt={fmt!r} is not implemented; only e4m3 ({supported_text()})")
    activation = qc.get("activation_scheme", "dynamic")
    if activation not in ("dynamic", "static"):
        raise QuantizationError(f"quant_method 'fp8' with activation_scheme={activation!r} is not implemented")
    ignore = tuple(qc.get("modules_to_not_convert") or qc.get("ignored_layers") or ())
    block = qc.get("weight_block_size")
    if block is not None:
        if len(block) != 2 or activation != "dynamic":
            raise QuantizationError(f"quant_method 'fp8' with weight_block_size={block} needs 2 sizes and dynamic activations")
        return Fp8Scheme("fp8", True, "block", (int(block[0]), int(block[1])), "dynamic", "group", ignore,
                         weight_scale_name="weight_scale_inv")
    return Fp8Scheme("fp8", True, "tensor", None, activation, "tensor" if activation == "static" else "token", ignore)


def _ct_float8_scheme(qc: Dict[str, Any]) -> Fp8Scheme:
    fmt = qc.get("format")
    if fmt not in ("float-quantized", "naive-quantized", None):
        raise QuantizationError(f"compressed-tensors format {fmt!r} is not implemented; only float8 checkpoints "
                                f"(format 'float-quantized'); {supported_text()}")
    groups = list((qc.get("config_groups") or {}).values())
    if not groups:
        raise QuantizationError("compressed-tensors quantization_config has no config_groups")
    schemes = {json.dumps([g.get("weights"), g.get("input_activations")], sort_keys=True) for g in groups}
    if len(schemes) > 1:
        raise QuantizationError("compressed-tensors checkpoints with several different schemes are not implemented")
    group = groups[0]
    targets = group.get("targets") or ["Linear"]
    if targets != ["Linear"]:
        raise QuantizationError(f"compressed-tensors targets {targets} are not implemented; only ['Linear']")
    w = group.get("weights") or {}
    if w.get("type") != "float" or w.get("num_bits") != 8:
        raise QuantizationError(
            f"compressed-tensors weights of type {w.get('type')!r} with {w.get('num_bits')} bits are not implemented; "
            f"only float8 (type 'float', num_bits 8); {supported_text()}"
        )
    strategy = w.get("strategy", "tensor")
    block = None
    if strategy == "block":
        block = tuple(int(b) for b in (w.get("block_structure") or ()))
        if len(block) != 2:
            raise QuantizationError(f"compressed-tensors block weights need block_structure [n, k]; got {w.get('block_structure')}")
    elif strategy not in ("tensor", "channel"):
        raise QuantizationError(f"compressed-tensors float8 weight strategy {strategy!r} is not implemented; "
                                "only tensor, channel, block")
    a = group.get("input_activations")
    if a is None:
        activation, act_strategy = None, "token"
    else:
        if a.get("type") != "float" or a.get("num_bits") != 8:
            raise QuantizationError(f"compressed-tensors activations of type {a.get('type')!r} with "
                                    f"{a.get('num_bits')} bits are not implemented; only float8")
        activation = "dynamic" if a.get("dynamic") else "static"
        act_strategy = a.get("strategy", "tensor" if activation == "static" else "token")
        if activation == "static" and act_strategy != "tensor":
            raise QuantizationError(f"compressed-tensors static activations per {act_strategy} are not implemented")
        if activation == "dynamic" and act_strategy not in ("token", "tensor", "group"):
            raise QuantizationError(f"compressed-tensors dynamic activations per {act_strategy} are not implemented")
        if act_strategy == "group" and block is None:
            act_strategy = "token"  # group activations only pair with block weights; per token is as fine
    return Fp8Scheme("compressed-tensors", True, strategy, block, activation, act_strategy,
                     tuple(qc.get("ignore") or ()))


def get_quant_scheme(checkpoint_qc: Optional[Dict[str, Any]], quantization: Optional[str],
                     load_format: str = "auto") -> Optional[Fp8Scheme]:
    """The scheme the model runs with, or None (unquantized); QuantizationError when we cannot run it.

    A checkpoint's own method wins; `--quantization` may repeat it but not contradict it (as vLLM).
    """
    check_method_name(quantization)
    scheme: Optional[Fp8Scheme] = None
    if checkpoint_qc is not None:
        method = str(checkpoint_qc.get("quant_method", "")).lower()
        if method == "fp8":
            scheme = _fp8_checkpoint_scheme(checkpoint_qc)
        elif method == "compressed-tensors":
            scheme = _ct_float8_scheme(checkpoint_qc)
        else:
            raise QuantizationError(
                f"the checkpoint's quantization_config has quant_method {method!r}, which sglserve does not "
                f"implement; {supported_text()}"
            )
        if quantization is not None and quantization != method:
            raise QuantizationError(f"--quantization={quantization!r} does not match the checkpoint's quant_method "
                                    f"{method!r}; leave --quantization out or pass {method!r}")
    elif quantization == "fp8":
        scheme = Fp8Scheme("fp8", False, "channel", None, "dynamic", "token")
    elif quantization == "compressed-tensors":
        raise QuantizationError("--quantization=compressed-tensors needs a compressed-tensors checkpoint; "
                                "to quantize an unquantized model at load use --quantization fp8")
    if scheme is not None and scheme.serialized and load_format == "dummy":
        scheme = scheme.for_random_weights()
    return scheme


def check_model_quantization(model_path: str, quantization: Optional[str], load_format: str = "auto") -> Optional[Fp8Scheme]:
    """The start-up check: reads only config.json (no weight), raises QuantizationError."""
    return get_quant_scheme(read_checkpoint_quant_config(model_path), quantization, load_format)


def ignored(module_names: Sequence[str], ignore: Sequence[str]) -> bool:
    """Whether the checkpoint modules (the shards of one of our layers) stay unquantized.

    An entry is a module name (exact, or a trailing part after a '.'), or 're:<regex>' matched in
    full, as in compressed-tensors. All shards of a fused layer must agree."""
    import re

    def one(name: str) -> bool:
        for entry in ignore:
            if entry.startswith("re:"):
                if re.fullmatch(entry[3:], name):
                    return True
            elif name == entry or name.endswith("." + entry) or name.startswith(entry + "."):
                return True
        return False

    flags = {one(n) for n in module_names}
    if len(flags) > 1:
        raise QuantizationError(f"the fused layer of {list(module_names)} is quantized in part only; not implemented")
    return flags.pop() if flags else False
