"""What every OpenAI-style, choice-based answer shares: the top-level ``Envelope``, the per-choice
``Choices``, the ``ChoiceAssembler`` base, the merge rules for unknown keys and logprobs, and the
backend profile fields and detection both chat and legacy completions use.

Top-level rules (``Envelope``): ``id`` first non-empty, ``model`` first, ``created`` first chunk
(last for servers that stamp the end), ``obfuscation`` dropped. ``usage``: the one on a chunk
without choices wins, else the last non-null one; never summed, never invented (no usage in the
stream -> no ``usage`` key). Unknown keys: the last non-null value, null when only null was seen.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..core import errors
from ..core.errors import ConversionError

MAX_CHOICES = 1024
# Keys with a rule of their own; any other key is carried as an extra.
_KNOWN_TOP_KEYS = frozenset({"id", "object", "created", "model", "choices", "usage", "obfuscation"})
GENERIC = "generic"


def keys(**defaults: Any) -> Mapping[str, Any]:
    """Keys (with their empty value) a native answer carries even when the stream never sent them."""
    return MappingProxyType(defaults)


@dataclass(frozen=True, slots=True)
class OpenAIProfile:
    """The native non-stream shape of one backend, in what every choice-based answer shares;
    defaults describe OpenAI's own answer. Only keys and their empty values: never data."""

    name: str
    # SGLang, TGI and llama.cpp stamp every chunk and take the time at the end of generation.
    created_from_last_chunk: bool = False
    # List defaults are copied per answer.
    top_keys: Mapping[str, Any] = field(default_factory=keys)
    choice_keys: Mapping[str, Any] = field(default_factory=lambda: keys(logprobs=None))
    usage_keys: Mapping[str, Any] = field(default_factory=keys)
    # ``auto``: the answer takes the shape of the backend the finished stream reveals.
    detect: bool = False


def detect_backend(
    *,
    first_id: str | None,
    top_extras: Mapping[str, Any],
    choice_extra_keys: set[str],
    obfuscated: bool = False,
) -> str:
    """The backend a finished stream reveals, from markers its server really emits (``auto``
    costs nothing per chunk); each API maps the name to its own profile (``vllm``: the API picks
    the release line its stream shows, see ``vllm_releases``).

    Ollama: ``system_fingerprint: "fp_ollama"``. llama.cpp: a ``timings`` object. SGLang:
    ``matched_stop`` on choices. vLLM: ``stop_reason`` on choices or ``prompt_token_ids``. OpenAI:
    an ``obfuscation`` key on the chunks, a ``service_tier``, or a ``system_fingerprint`` that
    starts with ``fp_``. TGI: only empty ids (``""``). Anything else stays generic.
    """
    if top_extras.get("system_fingerprint") == "fp_ollama":
        return "ollama"
    if "timings" in top_extras:
        return "llamacpp"
    if "matched_stop" in choice_extra_keys:
        return "sglang"
    if "stop_reason" in choice_extra_keys or "prompt_token_ids" in top_extras:
        return "vllm"
    fingerprint = top_extras.get("system_fingerprint")
    if obfuscated or "service_tier" in top_extras or (type(fingerprint) is str and fingerprint.startswith("fp_")):
        return "openai"
    if first_id == "":
        return "tgi"
    return GENERIC


def fill_defaults(target: dict[str, Any], defaults: Mapping[str, Any]) -> None:
    """Add the keys a native answer always carries, without touching what the stream set."""
    for key, empty in defaults.items():
        if key not in target:
            target[key] = [] if type(empty) is list else empty


def malformed(message: str) -> ConversionError:
    return errors.malformed(f"upstream stream chunk is malformed: {message}")


too_many = errors.too_many


def merge_last(extras: dict[str, Any], key: str, value: Any) -> None:
    """The non-stream value of an unknown field: the last non-null one, null if only null came."""
    if value is not None or key not in extras:
        extras[key] = value


def merge_extras(extras: dict[str, Any], keys: tuple[str, ...], source: dict[str, Any]) -> None:
    """``merge_last`` of each of ``keys`` from ``source`` (which has them all)."""
    for key in keys:
        value = source[key]
        if value is not None or key not in extras:
            extras[key] = value


class ExtraKeys:
    """Which keys of an object are extras (not in ``known``), remembered for the next object.

    The chunks of a stream nearly always repeat the keys of the one before: one C-level set
    comparison then replaces a Python loop over every key of every chunk.
    """

    __slots__ = ("_known", "_keys", "_extras")

    def __init__(self, known: frozenset[str]) -> None:
        self._known = known
        self._keys: frozenset[str] = frozenset()
        self._extras: tuple[str, ...] = ()

    def extras_of(self, obj: dict[str, Any]) -> tuple[str, ...]:
        """The extra keys of ``obj``, in its order (so that answers are deterministic)."""
        keys = self._keys
        if len(obj) != len(keys) or not keys.issuperset(obj):
            self._keys = frozenset(obj)
            self._extras = tuple(key for key in obj if key not in self._known)
        return self._extras


class Choices(dict[int, Any]):
    """Per-choice states keyed by ``index`` (a dict: an index of 1e9 allocates nothing), with the
    number not finished yet. Shared by every choice-based schema."""

    __slots__ = ("_new_state", "unfinished")

    def __init__(self, new_state: Any) -> None:
        super().__init__()
        self._new_state = new_state
        self.unfinished = 0

    @property
    def finished(self) -> bool:
        return bool(self) and self.unfinished == 0

    def state_of(self, choice: Any) -> Any:
        """The state of a stream ``choice`` object, created on its first chunk."""
        if type(choice) is not dict:
            raise malformed("a choice is not an object")
        index = choice.get("index", 0)
        if type(index) is not int:
            raise malformed("a choice 'index' is not an integer")
        state = self.get(index)
        if state is None:
            if len(self) >= MAX_CHOICES:
                raise too_many("choices", MAX_CHOICES)
            state = self[index] = self._new_state()
            self.unfinished += 1
        return state

    def finish(self, state: Any, finish_reason: str) -> None:
        """Record a finish reason (the last one wins, verbatim)."""
        if state.finish_reason is None:
            self.unfinished -= 1
        state.finish_reason = finish_reason


class Envelope:
    """The top-level fields every OpenAI-style chunk carries, and the usage."""

    __slots__ = (
        "_unsettled",
        "_id",
        "_model",
        "_created_first",
        "_last_chunk",
        "_final_usage",
        "_last_usage",
        "_extras",
        "_shape",
        "obfuscated",
    )

    def __init__(self) -> None:
        self._unsettled = True
        self._id: str | None = None
        self._model: Any = None
        self._created_first: Any = None
        self._last_chunk: dict[str, Any] = {}
        self._final_usage: dict[str, Any] | None = None
        self._last_usage: dict[str, Any] | None = None
        self._extras: dict[str, Any] = {}
        self._shape = ExtraKeys(_KNOWN_TOP_KEYS)
        self.obfuscated = False  # OpenAI pads its chunks with ``obfuscation``: seen on the first

    @property
    def usage(self) -> dict[str, Any] | None:
        return self._final_usage if self._final_usage is not None else self._last_usage

    def read(self, chunk: dict[str, Any]) -> list[Any]:
        """Fold the chunk's top level in and return its choices (validated to be a list)."""
        if self._unsettled:
            self._settle(chunk)
        self._last_chunk = chunk
        if not _KNOWN_TOP_KEYS.issuperset(chunk):
            merge_extras(self._extras, self._shape.extras_of(chunk), chunk)
        choices = chunk.get("choices")
        if type(choices) is not list:
            if choices is not None:
                raise malformed("'choices' is not a list")
            choices = []
        usage = chunk.get("usage")
        if usage is not None:
            if type(usage) is not dict:
                raise malformed("'usage' is not an object")
            if choices:
                self._last_usage = usage
            else:
                self._final_usage = usage
        return choices

    def _settle(self, chunk: dict[str, Any]) -> None:
        """First-seen fields; called only until all are known (TGI's ids stay empty: always)."""
        if "obfuscation" in chunk:
            self.obfuscated = True
        if not self._id:
            chunk_id = chunk.get("id")
            if chunk_id is not None:
                if type(chunk_id) is not str:
                    raise malformed("'id' is not a string")
                if self._id is None or chunk_id:
                    self._id = chunk_id
        if self._created_first is None:
            self._created_first = chunk.get("created")
        if self._model is None:
            self._model = chunk.get("model")
        self._unsettled = not self._id or self._created_first is None or self._model is None

    def detect_backend(self, choice_extra_keys: set[str]) -> str:
        return detect_backend(
            first_id=self._id,
            top_extras=self._extras,
            choice_extra_keys=choice_extra_keys,
            obfuscated=self.obfuscated,
        )

    @property
    def top_extras(self) -> Mapping[str, Any]:
        return self._extras

    def answer(self, profile: OpenAIProfile, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        answer: dict[str, Any] = {"id": self._id if self._id is not None else "", "object": obj}
        created = self._created_first
        if profile.created_from_last_chunk:
            created = self._last_chunk.get("created", created)
        if created is not None:
            answer["created"] = created
        if self._model is not None:
            answer["model"] = self._model
        answer["choices"] = choices
        usage = self.usage
        if usage is not None:
            usage = dict(usage)
            fill_defaults(usage, profile.usage_keys)
            answer["usage"] = usage
        answer.update(self._extras)
        fill_defaults(answer, profile.top_keys)
        return answer


def merge_logprobs(target: dict[str, Any] | None, logprobs: Any) -> dict[str, Any]:
    """Concatenate each list of a non-null ``logprobs`` object; other fields last non-null."""
    if type(logprobs) is not dict:
        raise malformed("'logprobs' is not an object")
    if target is None:
        target = {}
    for key, value in logprobs.items():
        if type(value) is list:
            pieces = target.get(key)
            if type(pieces) is list:
                pieces.extend(value)
            else:
                target[key] = list(value)
        else:
            merge_last(target, key, value)
    return target


def copy_logprobs(logprobs: dict[str, Any] | None) -> dict[str, Any] | None:
    if logprobs is None:
        return None
    return {key: list(value) if type(value) is list else value for key, value in logprobs.items()}


class ChoiceAssembler:
    """What every choice-based schema's assembler holds: the profile (``auto``'s detects the
    backend at the end), the top-level ``Envelope`` and the per-choice states."""

    __slots__ = ("_profile", "_envelope", "_choices")

    def __init__(self, profile: OpenAIProfile, new_choice_state: Any) -> None:
        self._profile = profile
        self._envelope = Envelope()
        self._choices = Choices(new_choice_state)

    def _detected_backend(self) -> str:
        """For ``auto``: the backend the finished stream reveals."""
        return self._envelope.detect_backend({key for state in self._choices.values() for key in state.extras})

    @property
    def finished(self) -> bool:
        return self._choices.finished

    @property
    def usage(self) -> dict[str, Any] | None:
        return self._envelope.usage
