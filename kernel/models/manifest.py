"""The manifest file that `llmos create NAME[:TAG] -f FILE` builds a model version from (TOML),
the defaults it gives processes, and the file `llmos show` prints back.

    from = "smollm2-135m"          # required: a model NAME[:TAG]; admins may name a local
                                   # directory or a .gguf file on the daemon's disk
    adapter = "smollm2-135m+notes" # a LoRA model over `from`'s weights
    quantize = "int8"              # none | int8 | int4
    prune = 0.25                   # fraction of each MLP's channels to remove, [0, 0.9]
    prune_heads = 0.0              # fraction of attention heads to remove, [0, 0.9]
    system = "You are terse."      # the system message of chats that bring none
    template = "{% for m in messages %}…{% endfor %}"  # a Jinja chat template
    stop = ["\\nUser:"]            # stop strings of processes that give none

    [parameters]                   # sampling of processes that do not set them
    temperature = 0.7
    top_k = 40
    top_p = 0.9
    max_tokens = 200

    [grammar]                      # a default output grammar: exactly one of
    json_schema = '{"type": "object"}'   # (or an inline table), json_object = true,
    # regex = "…", cfg = "…" (Lark), choices = ["yes", "no"]; and flexible_whitespace = true

Every key is checked: an unknown key, a value of the wrong type or out of range is an error
naming the key and the limit. A request's own settings always win over these defaults.
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field

from llmos.syscalls.abi.grammar import GrammarSpec
from llmos.syscalls.abi.spec import SamplingParams, SpawnSpec, SpecError, StopRules

MAX_MANIFEST_BYTES = 256 * 1024
MAX_TEMPLATE_CHARS = 64 * 1024
MAX_SYSTEM_CHARS = 64 * 1024
TOP = {"from": str, "adapter": str, "quantize": str, "prune": float, "prune_heads": float, "system": str,
       "template": str, "stop": list, "parameters": dict, "grammar": dict}
PARAMETERS = {"temperature": float, "top_k": int, "top_p": float, "max_tokens": int}
GRAMMAR = ("json_schema", "json_object", "regex", "cfg", "choices")


class ManifestError(ValueError):
    """A manifest that cannot be built; the message names the key and what it must be."""


@dataclass(frozen=True)
class Defaults:
    """What a model's processes get unless their request says otherwise."""

    system: str | None = None
    template: str | None = None
    stop: tuple[str, ...] = ()
    parameters: dict = field(default_factory=dict)   # of PARAMETERS
    grammar: dict | None = None                      # GrammarSpec's fields

    def merged_over(self, parent: "Defaults") -> "Defaults":
        """These defaults over a parent version's: a key set here wins."""
        return Defaults(self.system if self.system is not None else parent.system,
                        self.template if self.template is not None else parent.template,
                        self.stop or parent.stop, {**parent.parameters, **self.parameters},
                        self.grammar if self.grammar is not None else parent.grammar)

    def record(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, (), [], {})}

    @staticmethod
    def of(d: dict) -> "Defaults":
        return Defaults(d.get("system"), d.get("template"), tuple(d.get("stop", ())), dict(d.get("parameters", {})),
                        d.get("grammar"))


@dataclass(frozen=True)
class ManifestFile:
    """A parsed manifest: what to build a version from, and how."""

    source: str
    adapter: str = ""
    quantize: str = ""
    prune: float = 0.0
    prune_heads: float = 0.0
    defaults: Defaults = field(default_factory=Defaults)


def parse(text: str) -> ManifestFile:
    """A manifest from its TOML text; ManifestError naming the problem."""
    if len(text.encode()) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"the manifest is {len(text.encode())} bytes, over the limit of {MAX_MANIFEST_BYTES}")
    try:
        d = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ManifestError(f"the manifest is not valid TOML: {e}") from None
    _check_keys(d, TOP, "")
    if not d.get("from", "").strip():
        raise ManifestError("the manifest needs `from`: the model (NAME[:TAG], a directory or a .gguf) to build on")
    params = d.get("parameters", {})
    _check_keys(params, PARAMETERS, "parameters.")
    stop = d.get("stop", [])
    if not all(isinstance(s, str) for s in stop):
        raise ManifestError("stop must be a list of strings")
    defaults = Defaults(d.get("system"), d.get("template"), tuple(stop), params, _grammar(d.get("grammar")))
    check(defaults)
    prune, heads = float(d.get("prune", 0.0)), float(d.get("prune_heads", 0.0))
    return ManifestFile(d["from"].strip(), d.get("adapter", "").strip(), d.get("quantize", ""), prune, heads, defaults)


def check(d: Defaults) -> None:
    """ManifestError for defaults no process could run with."""
    if d.system is not None and len(d.system) > MAX_SYSTEM_CHARS:
        raise ManifestError(f"system is {len(d.system)} characters, over the limit of {MAX_SYSTEM_CHARS}")
    if d.template is not None:
        if len(d.template) > MAX_TEMPLATE_CHARS:
            raise ManifestError(f"template is {len(d.template)} characters, over the limit of {MAX_TEMPLATE_CHARS}")
        try:
            from jinja2.sandbox import ImmutableSandboxedEnvironment
            ImmutableSandboxedEnvironment().parse(d.template)
        except Exception as e:  # noqa: BLE001 - jinja's syntax errors
            raise ManifestError(f"template is not a valid Jinja template: {e}") from None
    p = d.parameters
    try:
        SamplingParams(temperature=p.get("temperature", 0.0), top_k=p.get("top_k", 0), top_p=p.get("top_p", 1.0)).check()
        StopRules(max_tokens=p.get("max_tokens", 1), stop=list(d.stop)).check()
        if d.grammar is not None:
            GrammarSpec(**d.grammar).check()
    except SpecError as e:
        where = "parameters." if e.field in PARAMETERS else ""
        raise ManifestError(f"{where}{e}") from None


def apply(d: Defaults, spec: SpawnSpec) -> SpawnSpec:
    """`spec` with the model's defaults where the request left a setting to the model."""
    if not (d.system or d.stop or d.parameters or d.grammar):
        return dataclasses.replace(spec, unset=()) if spec.unset else spec
    s, p = spec.sampling, d.parameters
    sampling = dataclasses.replace(s, **{k: p[k] for k in ("temperature", "top_k", "top_p")
                                         if k in spec.unset and k in p})
    stop = dataclasses.replace(spec.stop, stop=list(spec.stop.stop) or list(d.stop),
                               max_tokens=p["max_tokens"] if "max_tokens" in spec.unset and "max_tokens" in p
                               else spec.stop.max_tokens)
    messages = spec.messages
    if d.system and (messages is not None or spec.interactive) and spec.prompt is None and spec.tokens is None:
        if not any(m["role"] == "system" for m in messages or ()):
            messages = [{"role": "system", "content": d.system}, *(messages or ())]
    grammar = spec.grammar
    if grammar is None and not spec.tools and d.grammar is not None:
        grammar = GrammarSpec(**d.grammar)
    return dataclasses.replace(spec, sampling=sampling, stop=stop, messages=messages, grammar=grammar, unset=())


def render(source: str, quantize: str, prune: float, prune_heads: float, d: Defaults, header: list[str]) -> str:
    """A manifest file that describes a version (`llmos show`), with `header` as comments."""
    lines = [f"# {h}" for h in header] + [f"from = {_s(source)}"]
    if quantize not in ("", "none"):
        lines.append(f"quantize = {_s(quantize)}")
    lines += [f"{k} = {v:g}" for k, v in (("prune", prune), ("prune_heads", prune_heads)) if v]
    for k in ("system", "template"):
        if getattr(d, k) is not None:
            lines.append(f"{k} = {_s(getattr(d, k))}")
    if d.stop:
        lines.append(f"stop = [{', '.join(_s(x) for x in d.stop)}]")
    if d.parameters:
        lines += ["", "[parameters]"] + [f"{k} = {json.dumps(v)}" for k, v in sorted(d.parameters.items())]
    if d.grammar:
        g = d.grammar
        key = "choices" if g["kind"] == "choice" else g["kind"]
        value = "true" if key == "json_object" else \
            f"[{', '.join(_s(c) for c in g['source'])}]" if key == "choices" else _s(g["source"])
        lines += ["", "[grammar]", f"{key} = {value}"] + (["flexible_whitespace = true"]
                                                          if g.get("flexible_whitespace") else [])
    return "\n".join(lines) + "\n"


def _s(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a TOML basic string: JSON's escapes are TOML's


def _check_keys(d: dict, allowed: dict, prefix: str) -> None:
    for k, v in d.items():
        if k not in allowed:
            raise ManifestError(f"unknown key {prefix}{k!r} in the manifest; known: {', '.join(prefix + a for a in allowed)}")
        want = allowed[k]
        ok = isinstance(v, want) and not (want is int and isinstance(v, bool)) or \
            (want is float and isinstance(v, int) and not isinstance(v, bool))
        if not ok:
            raise ManifestError(f"{prefix}{k} must be a {want.__name__}, got {type(v).__name__}")


def _grammar(g: dict | None) -> dict | None:
    if g is None:
        return None
    unknown = set(g) - set(GRAMMAR) - {"flexible_whitespace"}
    if unknown:
        raise ManifestError(f"unknown key 'grammar.{sorted(unknown)[0]}' in the manifest; known: "
                            f"{', '.join('grammar.' + k for k in (*GRAMMAR, 'flexible_whitespace'))}")
    given = [k for k in GRAMMAR if k in g]
    if len(given) != 1:
        raise ManifestError(f"[grammar] takes exactly one of {', '.join(GRAMMAR)}")
    key, value = given[0], g[given[0]]
    flexible = bool(g.get("flexible_whitespace", False))
    if key == "json_object":
        return {"kind": "json_object", "source": "", "flexible_whitespace": flexible}
    if key == "choices":
        if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
            raise ManifestError("grammar.choices must be a list of strings")
        return {"kind": "choice", "source": list(value), "flexible_whitespace": flexible}
    if key == "json_schema" and isinstance(value, dict):
        value = json.dumps(value)
    if not isinstance(value, str):
        raise ManifestError(f"grammar.{key} must be a string")
    if key == "json_schema":
        try:
            json.loads(value)
        except ValueError as e:
            raise ManifestError(f"grammar.json_schema is not JSON: {e}") from None
    return {"kind": key, "source": value, "flexible_whitespace": flexible}
