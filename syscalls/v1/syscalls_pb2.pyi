from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Signal(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TERM: _ClassVar[Signal]
    KILL: _ClassVar[Signal]
    STOP: _ClassVar[Signal]
    CONT: _ClassVar[Signal]

class Until(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXIT: _ClassVar[Until]
    TURN: _ClassVar[Until]
    NOW: _ClassVar[Until]
TERM: Signal
KILL: Signal
STOP: Signal
CONT: Signal
EXIT: Until
TURN: Until
NOW: Until

class Sampling(_message.Message):
    __slots__ = ("temperature", "top_k", "top_p", "seed", "logprobs", "top_logprobs")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    TOP_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_k: int
    top_p: float
    seed: int
    logprobs: bool
    top_logprobs: int
    def __init__(self, temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ..., logprobs: _Optional[bool] = ..., top_logprobs: _Optional[int] = ...) -> None: ...

class TopLogprob(_message.Message):
    __slots__ = ("token", "text", "logprob")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    token: int
    text: str
    logprob: float
    def __init__(self, token: _Optional[int] = ..., text: _Optional[str] = ..., logprob: _Optional[float] = ...) -> None: ...

class TokenLogprob(_message.Message):
    __slots__ = ("token", "text", "logprob", "top")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    token: int
    text: str
    logprob: float
    top: _containers.RepeatedCompositeFieldContainer[TopLogprob]
    def __init__(self, token: _Optional[int] = ..., text: _Optional[str] = ..., logprob: _Optional[float] = ..., top: _Optional[_Iterable[_Union[TopLogprob, _Mapping]]] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_pages", "max_wall_s")
    MAX_PAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_WALL_S_FIELD_NUMBER: _ClassVar[int]
    max_pages: int
    max_wall_s: float
    def __init__(self, max_pages: _Optional[int] = ..., max_wall_s: _Optional[float] = ...) -> None: ...

class ToolCall(_message.Message):
    __slots__ = ("id", "name", "arguments")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    arguments: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., arguments: _Optional[str] = ...) -> None: ...

class ChatMessage(_message.Message):
    __slots__ = ("role", "content", "tool_calls", "tool_call_id")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    tool_calls: _containers.RepeatedCompositeFieldContainer[ToolCall]
    tool_call_id: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ..., tool_calls: _Optional[_Iterable[_Union[ToolCall, _Mapping]]] = ..., tool_call_id: _Optional[str] = ...) -> None: ...

class Tool(_message.Message):
    __slots__ = ("name", "description", "parameters")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    parameters: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., parameters: _Optional[str] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "generated_tokens", "cached_tokens", "ttft_s", "pages_held", "swaps", "preemptions")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TTFT_S_FIELD_NUMBER: _ClassVar[int]
    PAGES_HELD_FIELD_NUMBER: _ClassVar[int]
    SWAPS_FIELD_NUMBER: _ClassVar[int]
    PREEMPTIONS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    generated_tokens: int
    cached_tokens: int
    ttft_s: float
    pages_held: int
    swaps: int
    preemptions: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., generated_tokens: _Optional[int] = ..., cached_tokens: _Optional[int] = ..., ttft_s: _Optional[float] = ..., pages_held: _Optional[int] = ..., swaps: _Optional[int] = ..., preemptions: _Optional[int] = ...) -> None: ...

class ProcInfo(_message.Message):
    __slots__ = ("pid", "ppid", "model", "owner", "state", "reason", "priority", "interactive", "usage", "num_tokens", "output_chars", "age_s", "run_s", "max_tokens", "device")
    PID_FIELD_NUMBER: _ClassVar[int]
    PPID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    INTERACTIVE_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_CHARS_FIELD_NUMBER: _ClassVar[int]
    AGE_S_FIELD_NUMBER: _ClassVar[int]
    RUN_S_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    pid: int
    ppid: int
    model: str
    owner: str
    state: str
    reason: str
    priority: int
    interactive: bool
    usage: Usage
    num_tokens: int
    output_chars: int
    age_s: float
    run_s: float
    max_tokens: int
    device: str
    def __init__(self, pid: _Optional[int] = ..., ppid: _Optional[int] = ..., model: _Optional[str] = ..., owner: _Optional[str] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., priority: _Optional[int] = ..., interactive: _Optional[bool] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., num_tokens: _Optional[int] = ..., output_chars: _Optional[int] = ..., age_s: _Optional[float] = ..., run_s: _Optional[float] = ..., max_tokens: _Optional[int] = ..., device: _Optional[str] = ...) -> None: ...

class Grammar(_message.Message):
    __slots__ = ("kind", "source", "choices", "flexible_whitespace")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    FLEXIBLE_WHITESPACE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    source: str
    choices: _containers.RepeatedScalarFieldContainer[str]
    flexible_whitespace: bool
    def __init__(self, kind: _Optional[str] = ..., source: _Optional[str] = ..., choices: _Optional[_Iterable[str]] = ..., flexible_whitespace: _Optional[bool] = ...) -> None: ...

class SpawnRequest(_message.Message):
    __slots__ = ("model", "prompt", "messages", "tokens", "sampling", "max_tokens", "stop", "ignore_eos", "priority", "limits", "interactive", "owner", "quantize", "grammar", "tools", "no_speculate")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    IGNORE_EOS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    INTERACTIVE_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    QUANTIZE_FIELD_NUMBER: _ClassVar[int]
    GRAMMAR_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    NO_SPECULATE_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompt: str
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    tokens: _containers.RepeatedScalarFieldContainer[int]
    sampling: Sampling
    max_tokens: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    ignore_eos: bool
    priority: int
    limits: Limits
    interactive: bool
    owner: str
    quantize: str
    grammar: Grammar
    tools: _containers.RepeatedCompositeFieldContainer[Tool]
    no_speculate: bool
    def __init__(self, model: _Optional[str] = ..., prompt: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., tokens: _Optional[_Iterable[int]] = ..., sampling: _Optional[_Union[Sampling, _Mapping]] = ..., max_tokens: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., ignore_eos: _Optional[bool] = ..., priority: _Optional[int] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., interactive: _Optional[bool] = ..., owner: _Optional[str] = ..., quantize: _Optional[str] = ..., grammar: _Optional[_Union[Grammar, _Mapping]] = ..., tools: _Optional[_Iterable[_Union[Tool, _Mapping]]] = ..., no_speculate: _Optional[bool] = ...) -> None: ...

class SpawnResponse(_message.Message):
    __slots__ = ("pid",)
    PID_FIELD_NUMBER: _ClassVar[int]
    pid: int
    def __init__(self, pid: _Optional[int] = ...) -> None: ...

class ReadRequest(_message.Message):
    __slots__ = ("pid", "offset", "until")
    PID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    pid: int
    offset: int
    until: Until
    def __init__(self, pid: _Optional[int] = ..., offset: _Optional[int] = ..., until: _Optional[_Union[Until, str]] = ...) -> None: ...

class ReadResponse(_message.Message):
    __slots__ = ("text", "offset", "state", "reason", "logprobs")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    text: str
    offset: int
    state: str
    reason: str
    logprobs: _containers.RepeatedCompositeFieldContainer[TokenLogprob]
    def __init__(self, text: _Optional[str] = ..., offset: _Optional[int] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., logprobs: _Optional[_Iterable[_Union[TokenLogprob, _Mapping]]] = ...) -> None: ...

class WriteRequest(_message.Message):
    __slots__ = ("pid", "text", "role")
    PID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    pid: int
    text: str
    role: str
    def __init__(self, pid: _Optional[int] = ..., text: _Optional[str] = ..., role: _Optional[str] = ...) -> None: ...

class WriteResponse(_message.Message):
    __slots__ = ("offset",)
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    offset: int
    def __init__(self, offset: _Optional[int] = ...) -> None: ...

class WaitRequest(_message.Message):
    __slots__ = ("pid", "until", "reap")
    PID_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    REAP_FIELD_NUMBER: _ClassVar[int]
    pid: int
    until: Until
    reap: bool
    def __init__(self, pid: _Optional[int] = ..., until: _Optional[_Union[Until, str]] = ..., reap: _Optional[bool] = ...) -> None: ...

class WaitResponse(_message.Message):
    __slots__ = ("proc", "output", "results", "logprobs")
    class ResultsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    PROC_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    proc: ProcInfo
    output: str
    results: _containers.ScalarMap[str, float]
    logprobs: _containers.RepeatedCompositeFieldContainer[TokenLogprob]
    def __init__(self, proc: _Optional[_Union[ProcInfo, _Mapping]] = ..., output: _Optional[str] = ..., results: _Optional[_Mapping[str, float]] = ..., logprobs: _Optional[_Iterable[_Union[TokenLogprob, _Mapping]]] = ...) -> None: ...

class KillRequest(_message.Message):
    __slots__ = ("pid", "signal")
    PID_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    pid: int
    signal: Signal
    def __init__(self, pid: _Optional[int] = ..., signal: _Optional[_Union[Signal, str]] = ...) -> None: ...

class KillResponse(_message.Message):
    __slots__ = ("proc",)
    PROC_FIELD_NUMBER: _ClassVar[int]
    proc: ProcInfo
    def __init__(self, proc: _Optional[_Union[ProcInfo, _Mapping]] = ...) -> None: ...

class ReniceRequest(_message.Message):
    __slots__ = ("pid", "priority")
    PID_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    pid: int
    priority: int
    def __init__(self, pid: _Optional[int] = ..., priority: _Optional[int] = ...) -> None: ...

class ReniceResponse(_message.Message):
    __slots__ = ("proc",)
    PROC_FIELD_NUMBER: _ClassVar[int]
    proc: ProcInfo
    def __init__(self, proc: _Optional[_Union[ProcInfo, _Mapping]] = ...) -> None: ...

class ForkRequest(_message.Message):
    __slots__ = ("pid", "text", "sampling", "max_tokens")
    PID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    pid: int
    text: str
    sampling: Sampling
    max_tokens: int
    def __init__(self, pid: _Optional[int] = ..., text: _Optional[str] = ..., sampling: _Optional[_Union[Sampling, _Mapping]] = ..., max_tokens: _Optional[int] = ...) -> None: ...

class ForkResponse(_message.Message):
    __slots__ = ("pid",)
    PID_FIELD_NUMBER: _ClassVar[int]
    pid: int
    def __init__(self, pid: _Optional[int] = ...) -> None: ...

class PipeRequest(_message.Message):
    __slots__ = ("src", "dst")
    SRC_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    src: int
    dst: int
    def __init__(self, src: _Optional[int] = ..., dst: _Optional[int] = ...) -> None: ...

class PipeResponse(_message.Message):
    __slots__ = ("dst_offset",)
    DST_OFFSET_FIELD_NUMBER: _ClassVar[int]
    dst_offset: int
    def __init__(self, dst_offset: _Optional[int] = ...) -> None: ...

class PsRequest(_message.Message):
    __slots__ = ("model", "states", "owner", "live_only")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    LIVE_ONLY_FIELD_NUMBER: _ClassVar[int]
    model: str
    states: _containers.RepeatedScalarFieldContainer[str]
    owner: str
    live_only: bool
    def __init__(self, model: _Optional[str] = ..., states: _Optional[_Iterable[str]] = ..., owner: _Optional[str] = ..., live_only: _Optional[bool] = ...) -> None: ...

class PsResponse(_message.Message):
    __slots__ = ("procs",)
    PROCS_FIELD_NUMBER: _ClassVar[int]
    procs: _containers.RepeatedCompositeFieldContainer[ProcInfo]
    def __init__(self, procs: _Optional[_Iterable[_Union[ProcInfo, _Mapping]]] = ...) -> None: ...

class StatRequest(_message.Message):
    __slots__ = ("pid",)
    PID_FIELD_NUMBER: _ClassVar[int]
    pid: int
    def __init__(self, pid: _Optional[int] = ...) -> None: ...

class StatResponse(_message.Message):
    __slots__ = ("proc",)
    PROC_FIELD_NUMBER: _ClassVar[int]
    proc: ProcInfo
    def __init__(self, proc: _Optional[_Union[ProcInfo, _Mapping]] = ...) -> None: ...

class MemInfoRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class PoolInfo(_message.Message):
    __slots__ = ("model", "page_size", "total", "free", "used", "shared", "cached", "swapped", "swap_total", "waste_tokens", "kv_bytes", "device")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    FREE_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    SHARED_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    SWAPPED_FIELD_NUMBER: _ClassVar[int]
    SWAP_TOTAL_FIELD_NUMBER: _ClassVar[int]
    WASTE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    KV_BYTES_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    model: str
    page_size: int
    total: int
    free: int
    used: int
    shared: int
    cached: int
    swapped: int
    swap_total: int
    waste_tokens: int
    kv_bytes: int
    device: str
    def __init__(self, model: _Optional[str] = ..., page_size: _Optional[int] = ..., total: _Optional[int] = ..., free: _Optional[int] = ..., used: _Optional[int] = ..., shared: _Optional[int] = ..., cached: _Optional[int] = ..., swapped: _Optional[int] = ..., swap_total: _Optional[int] = ..., waste_tokens: _Optional[int] = ..., kv_bytes: _Optional[int] = ..., device: _Optional[str] = ...) -> None: ...

class MemInfoResponse(_message.Message):
    __slots__ = ("pools",)
    POOLS_FIELD_NUMBER: _ClassVar[int]
    pools: _containers.RepeatedCompositeFieldContainer[PoolInfo]
    def __init__(self, pools: _Optional[_Iterable[_Union[PoolInfo, _Mapping]]] = ...) -> None: ...

class DevicesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Device(_message.Message):
    __slots__ = ("name", "kind", "index", "total_memory", "free_memory", "utilization", "temperature", "threads", "telemetry_error", "node")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MEMORY_FIELD_NUMBER: _ClassVar[int]
    FREE_MEMORY_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_ERROR_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    index: int
    total_memory: int
    free_memory: int
    utilization: float
    temperature: float
    threads: int
    telemetry_error: str
    node: str
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., index: _Optional[int] = ..., total_memory: _Optional[int] = ..., free_memory: _Optional[int] = ..., utilization: _Optional[float] = ..., temperature: _Optional[float] = ..., threads: _Optional[int] = ..., telemetry_error: _Optional[str] = ..., node: _Optional[str] = ...) -> None: ...

class DevicesResponse(_message.Message):
    __slots__ = ("devices",)
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedCompositeFieldContainer[Device]
    def __init__(self, devices: _Optional[_Iterable[_Union[Device, _Mapping]]] = ...) -> None: ...

class MigrateRequest(_message.Message):
    __slots__ = ("pid", "to", "by")
    PID_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    BY_FIELD_NUMBER: _ClassVar[int]
    pid: int
    to: str
    by: str
    def __init__(self, pid: _Optional[int] = ..., to: _Optional[str] = ..., by: _Optional[str] = ...) -> None: ...

class MigrateResponse(_message.Message):
    __slots__ = ("proc", "source", "how")
    PROC_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    HOW_FIELD_NUMBER: _ClassVar[int]
    proc: ProcInfo
    source: str
    how: str
    def __init__(self, proc: _Optional[_Union[ProcInfo, _Mapping]] = ..., source: _Optional[str] = ..., how: _Optional[str] = ...) -> None: ...

class DrainRequest(_message.Message):
    __slots__ = ("device", "undo")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    UNDO_FIELD_NUMBER: _ClassVar[int]
    device: str
    undo: bool
    def __init__(self, device: _Optional[str] = ..., undo: _Optional[bool] = ...) -> None: ...

class Moved(_message.Message):
    __slots__ = ("pid", "device")
    PID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    pid: int
    device: str
    def __init__(self, pid: _Optional[int] = ..., device: _Optional[str] = ...) -> None: ...

class DrainResponse(_message.Message):
    __slots__ = ("moved",)
    MOVED_FIELD_NUMBER: _ClassVar[int]
    moved: _containers.RepeatedCompositeFieldContainer[Moved]
    def __init__(self, moved: _Optional[_Iterable[_Union[Moved, _Mapping]]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "architecture", "source", "num_layers", "vocab_size", "max_context", "dtype", "num_parameters", "weight_bytes", "kv_bytes", "kv_pages", "live_procs", "loaded_at", "quantize", "ppl_ratio", "base", "lora_rank", "ppl_tolerance", "kernels", "pruned", "pruned_heads", "prune_ppl_ratio", "digest", "preset_of", "devices")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    NUM_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_BYTES_FIELD_NUMBER: _ClassVar[int]
    KV_BYTES_FIELD_NUMBER: _ClassVar[int]
    KV_PAGES_FIELD_NUMBER: _ClassVar[int]
    LIVE_PROCS_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    QUANTIZE_FIELD_NUMBER: _ClassVar[int]
    PPL_RATIO_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    LORA_RANK_FIELD_NUMBER: _ClassVar[int]
    PPL_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    KERNELS_FIELD_NUMBER: _ClassVar[int]
    PRUNED_FIELD_NUMBER: _ClassVar[int]
    PRUNED_HEADS_FIELD_NUMBER: _ClassVar[int]
    PRUNE_PPL_RATIO_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    PRESET_OF_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    name: str
    architecture: str
    source: str
    num_layers: int
    vocab_size: int
    max_context: int
    dtype: str
    num_parameters: int
    weight_bytes: int
    kv_bytes: int
    kv_pages: int
    live_procs: int
    loaded_at: float
    quantize: str
    ppl_ratio: float
    base: str
    lora_rank: int
    ppl_tolerance: float
    kernels: str
    pruned: float
    pruned_heads: float
    prune_ppl_ratio: float
    digest: str
    preset_of: str
    devices: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., architecture: _Optional[str] = ..., source: _Optional[str] = ..., num_layers: _Optional[int] = ..., vocab_size: _Optional[int] = ..., max_context: _Optional[int] = ..., dtype: _Optional[str] = ..., num_parameters: _Optional[int] = ..., weight_bytes: _Optional[int] = ..., kv_bytes: _Optional[int] = ..., kv_pages: _Optional[int] = ..., live_procs: _Optional[int] = ..., loaded_at: _Optional[float] = ..., quantize: _Optional[str] = ..., ppl_ratio: _Optional[float] = ..., base: _Optional[str] = ..., lora_rank: _Optional[int] = ..., ppl_tolerance: _Optional[float] = ..., kernels: _Optional[str] = ..., pruned: _Optional[float] = ..., pruned_heads: _Optional[float] = ..., prune_ppl_ratio: _Optional[float] = ..., digest: _Optional[str] = ..., preset_of: _Optional[str] = ..., devices: _Optional[_Iterable[str]] = ...) -> None: ...

class StoredModel(_message.Message):
    __slots__ = ("name", "digest", "kind", "size", "created", "owner", "made_from", "lineage", "quantize", "prune", "loaded")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    MADE_FROM_FIELD_NUMBER: _ClassVar[int]
    LINEAGE_FIELD_NUMBER: _ClassVar[int]
    QUANTIZE_FIELD_NUMBER: _ClassVar[int]
    PRUNE_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    name: str
    digest: str
    kind: str
    size: int
    created: float
    owner: str
    made_from: str
    lineage: str
    quantize: str
    prune: float
    loaded: bool
    def __init__(self, name: _Optional[str] = ..., digest: _Optional[str] = ..., kind: _Optional[str] = ..., size: _Optional[int] = ..., created: _Optional[float] = ..., owner: _Optional[str] = ..., made_from: _Optional[str] = ..., lineage: _Optional[str] = ..., quantize: _Optional[str] = ..., prune: _Optional[float] = ..., loaded: _Optional[bool] = ...) -> None: ...

class CreateModelRequest(_message.Message):
    __slots__ = ("name", "manifest")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    name: str
    manifest: str
    def __init__(self, name: _Optional[str] = ..., manifest: _Optional[str] = ...) -> None: ...

class CreateModelResponse(_message.Message):
    __slots__ = ("model", "loaded")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    model: StoredModel
    loaded: bool
    def __init__(self, model: _Optional[_Union[StoredModel, _Mapping]] = ..., loaded: _Optional[bool] = ...) -> None: ...

class ShowModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ShowModelResponse(_message.Message):
    __slots__ = ("model", "manifest")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    model: StoredModel
    manifest: str
    def __init__(self, model: _Optional[_Union[StoredModel, _Mapping]] = ..., manifest: _Optional[str] = ...) -> None: ...

class TagModelRequest(_message.Message):
    __slots__ = ("source", "target")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    source: str
    target: str
    def __init__(self, source: _Optional[str] = ..., target: _Optional[str] = ...) -> None: ...

class TagModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: StoredModel
    def __init__(self, model: _Optional[_Union[StoredModel, _Mapping]] = ...) -> None: ...

class RemoveModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RemoveModelResponse(_message.Message):
    __slots__ = ("digest", "versions_removed", "bytes_freed")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    BYTES_FREED_FIELD_NUMBER: _ClassVar[int]
    digest: str
    versions_removed: int
    bytes_freed: int
    def __init__(self, digest: _Optional[str] = ..., versions_removed: _Optional[int] = ..., bytes_freed: _Optional[int] = ...) -> None: ...

class ModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelsResponse(_message.Message):
    __slots__ = ("loaded", "stored", "versions")
    LOADED_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    loaded: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    stored: _containers.RepeatedScalarFieldContainer[str]
    versions: _containers.RepeatedCompositeFieldContainer[StoredModel]
    def __init__(self, loaded: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., stored: _Optional[_Iterable[str]] = ..., versions: _Optional[_Iterable[_Union[StoredModel, _Mapping]]] = ...) -> None: ...

class LoadModelRequest(_message.Message):
    __slots__ = ("model", "name", "dtype", "quantize", "prune", "prune_heads", "replicas", "devices")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    QUANTIZE_FIELD_NUMBER: _ClassVar[int]
    PRUNE_FIELD_NUMBER: _ClassVar[int]
    PRUNE_HEADS_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    model: str
    name: str
    dtype: str
    quantize: str
    prune: float
    prune_heads: float
    replicas: int
    devices: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[str] = ..., name: _Optional[str] = ..., dtype: _Optional[str] = ..., quantize: _Optional[str] = ..., prune: _Optional[float] = ..., prune_heads: _Optional[float] = ..., replicas: _Optional[int] = ..., devices: _Optional[_Iterable[str]] = ...) -> None: ...

class LoadModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ModelInfo
    def __init__(self, model: _Optional[_Union[ModelInfo, _Mapping]] = ...) -> None: ...

class UnloadModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class UnloadModelResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DmesgRequest(_message.Message):
    __slots__ = ("limit", "since")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    limit: int
    since: float
    def __init__(self, limit: _Optional[int] = ..., since: _Optional[float] = ...) -> None: ...

class LogLine(_message.Message):
    __slots__ = ("time", "level", "msg")
    TIME_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    MSG_FIELD_NUMBER: _ClassVar[int]
    time: float
    level: str
    msg: str
    def __init__(self, time: _Optional[float] = ..., level: _Optional[str] = ..., msg: _Optional[str] = ...) -> None: ...

class DmesgResponse(_message.Message):
    __slots__ = ("lines",)
    LINES_FIELD_NUMBER: _ClassVar[int]
    lines: _containers.RepeatedCompositeFieldContainer[LogLine]
    def __init__(self, lines: _Optional[_Iterable[_Union[LogLine, _Mapping]]] = ...) -> None: ...

class ShutdownRequest(_message.Message):
    __slots__ = ("grace_s",)
    GRACE_S_FIELD_NUMBER: _ClassVar[int]
    grace_s: float
    def __init__(self, grace_s: _Optional[float] = ...) -> None: ...

class ShutdownResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WhoamiRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Quota(_message.Message):
    __slots__ = ("procs", "pages", "tokens_per_min", "data_bytes")
    PROCS_FIELD_NUMBER: _ClassVar[int]
    PAGES_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_MIN_FIELD_NUMBER: _ClassVar[int]
    DATA_BYTES_FIELD_NUMBER: _ClassVar[int]
    procs: int
    pages: int
    tokens_per_min: int
    data_bytes: int
    def __init__(self, procs: _Optional[int] = ..., pages: _Optional[int] = ..., tokens_per_min: _Optional[int] = ..., data_bytes: _Optional[int] = ...) -> None: ...

class WhoamiResponse(_message.Message):
    __slots__ = ("user", "admin", "via", "uid", "token", "limits", "used")
    USER_FIELD_NUMBER: _ClassVar[int]
    ADMIN_FIELD_NUMBER: _ClassVar[int]
    VIA_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    user: str
    admin: bool
    via: str
    uid: int
    token: str
    limits: Quota
    used: Quota
    def __init__(self, user: _Optional[str] = ..., admin: _Optional[bool] = ..., via: _Optional[str] = ..., uid: _Optional[int] = ..., token: _Optional[str] = ..., limits: _Optional[_Union[Quota, _Mapping]] = ..., used: _Optional[_Union[Quota, _Mapping]] = ...) -> None: ...

class TokenInfo(_message.Message):
    __slots__ = ("id", "name", "user", "admin", "created")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    ADMIN_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    user: str
    admin: bool
    created: float
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., user: _Optional[str] = ..., admin: _Optional[bool] = ..., created: _Optional[float] = ...) -> None: ...

class CreateTokenRequest(_message.Message):
    __slots__ = ("name", "user", "admin")
    NAME_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    ADMIN_FIELD_NUMBER: _ClassVar[int]
    name: str
    user: str
    admin: bool
    def __init__(self, name: _Optional[str] = ..., user: _Optional[str] = ..., admin: _Optional[bool] = ...) -> None: ...

class CreateTokenResponse(_message.Message):
    __slots__ = ("token", "secret")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    token: TokenInfo
    secret: str
    def __init__(self, token: _Optional[_Union[TokenInfo, _Mapping]] = ..., secret: _Optional[str] = ...) -> None: ...

class ListTokensRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTokensResponse(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[TokenInfo]
    def __init__(self, tokens: _Optional[_Iterable[_Union[TokenInfo, _Mapping]]] = ...) -> None: ...

class RevokeTokenRequest(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: str
    def __init__(self, token: _Optional[str] = ...) -> None: ...

class RevokeTokenResponse(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: TokenInfo
    def __init__(self, token: _Optional[_Union[TokenInfo, _Mapping]] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("generated_tokens", "tokens_per_s", "rate_window_s", "queue_depth", "procs", "pools", "devices", "uptime_s", "step_seconds", "task_seconds")
    class ProcsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    RATE_WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    PROCS_FIELD_NUMBER: _ClassVar[int]
    POOLS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    STEP_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TASK_SECONDS_FIELD_NUMBER: _ClassVar[int]
    generated_tokens: int
    tokens_per_s: float
    rate_window_s: float
    queue_depth: int
    procs: _containers.ScalarMap[str, int]
    pools: _containers.RepeatedCompositeFieldContainer[PoolInfo]
    devices: _containers.RepeatedCompositeFieldContainer[Device]
    uptime_s: float
    step_seconds: float
    task_seconds: float
    def __init__(self, generated_tokens: _Optional[int] = ..., tokens_per_s: _Optional[float] = ..., rate_window_s: _Optional[float] = ..., queue_depth: _Optional[int] = ..., procs: _Optional[_Mapping[str, int]] = ..., pools: _Optional[_Iterable[_Union[PoolInfo, _Mapping]]] = ..., devices: _Optional[_Iterable[_Union[Device, _Mapping]]] = ..., uptime_s: _Optional[float] = ..., step_seconds: _Optional[float] = ..., task_seconds: _Optional[float] = ...) -> None: ...

class UsageRequest(_message.Message):
    __slots__ = ("user", "model", "since", "by")
    USER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    BY_FIELD_NUMBER: _ClassVar[int]
    user: str
    model: str
    since: str
    by: str
    def __init__(self, user: _Optional[str] = ..., model: _Optional[str] = ..., since: _Optional[str] = ..., by: _Optional[str] = ...) -> None: ...

class UsageRow(_message.Message):
    __slots__ = ("user", "model", "period_start", "prompt_tokens", "generated_tokens", "step_seconds", "task_seconds", "processes")
    USER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STEP_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TASK_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    user: str
    model: str
    period_start: float
    prompt_tokens: int
    generated_tokens: int
    step_seconds: float
    task_seconds: float
    processes: int
    def __init__(self, user: _Optional[str] = ..., model: _Optional[str] = ..., period_start: _Optional[float] = ..., prompt_tokens: _Optional[int] = ..., generated_tokens: _Optional[int] = ..., step_seconds: _Optional[float] = ..., task_seconds: _Optional[float] = ..., processes: _Optional[int] = ...) -> None: ...

class UsageResponse(_message.Message):
    __slots__ = ("rows",)
    ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[UsageRow]
    def __init__(self, rows: _Optional[_Iterable[_Union[UsageRow, _Mapping]]] = ...) -> None: ...

class EvalRequest(_message.Message):
    __slots__ = ("model", "path", "metric", "max_tokens", "window", "priority", "owner", "quantize", "data", "data_name")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    QUANTIZE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    DATA_NAME_FIELD_NUMBER: _ClassVar[int]
    model: str
    path: str
    metric: str
    max_tokens: int
    window: int
    priority: int
    owner: str
    quantize: str
    data: bytes
    data_name: str
    def __init__(self, model: _Optional[str] = ..., path: _Optional[str] = ..., metric: _Optional[str] = ..., max_tokens: _Optional[int] = ..., window: _Optional[int] = ..., priority: _Optional[int] = ..., owner: _Optional[str] = ..., quantize: _Optional[str] = ..., data: _Optional[bytes] = ..., data_name: _Optional[str] = ...) -> None: ...

class EvalResponse(_message.Message):
    __slots__ = ("pid",)
    PID_FIELD_NUMBER: _ClassVar[int]
    pid: int
    def __init__(self, pid: _Optional[int] = ...) -> None: ...

class TrainRequest(_message.Message):
    __slots__ = ("model", "path", "steps", "lr", "rank", "batch", "checkpoint_every", "resume", "name", "priority", "owner", "micro_batch", "max_len", "data", "data_name", "distill", "temperature", "alpha", "full")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_EVERY_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    MICRO_BATCH_FIELD_NUMBER: _ClassVar[int]
    MAX_LEN_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    DATA_NAME_FIELD_NUMBER: _ClassVar[int]
    DISTILL_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    FULL_FIELD_NUMBER: _ClassVar[int]
    model: str
    path: str
    steps: int
    lr: float
    rank: int
    batch: int
    checkpoint_every: int
    resume: bool
    name: str
    priority: int
    owner: str
    micro_batch: int
    max_len: int
    data: bytes
    data_name: str
    distill: str
    temperature: float
    alpha: float
    full: bool
    def __init__(self, model: _Optional[str] = ..., path: _Optional[str] = ..., steps: _Optional[int] = ..., lr: _Optional[float] = ..., rank: _Optional[int] = ..., batch: _Optional[int] = ..., checkpoint_every: _Optional[int] = ..., resume: _Optional[bool] = ..., name: _Optional[str] = ..., priority: _Optional[int] = ..., owner: _Optional[str] = ..., micro_batch: _Optional[int] = ..., max_len: _Optional[int] = ..., data: _Optional[bytes] = ..., data_name: _Optional[str] = ..., distill: _Optional[str] = ..., temperature: _Optional[float] = ..., alpha: _Optional[float] = ..., full: _Optional[bool] = ...) -> None: ...

class TrainResponse(_message.Message):
    __slots__ = ("pid", "name")
    PID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    pid: int
    name: str
    def __init__(self, pid: _Optional[int] = ..., name: _Optional[str] = ...) -> None: ...
