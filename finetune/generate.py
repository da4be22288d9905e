"""Generation for the playground: one loaded base per model, adapters switched on it by name."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from errors import UserError
from finetune.fields import Field, Request, SpecError
from finetune.methods import method_of_type
from finetune.tasks import CAUSAL_LM, SEQ_2_SEQ_LM, SEQ_CLS, model_task

MAX_STOPS = 4


@dataclass(frozen=True)
class GenerationParams(Request):
    """How an answer is sampled; every field optional."""

    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    seed: int = 0
    system_prompt: str = ""
    stop: tuple[str, ...] = ()  # the answer ends before the first of these it writes

    FIELDS = (
        Field("max_new_tokens", "Max new tokens", int, 64, minimum=1, maximum=2048),
        Field("temperature", "Temperature", float, 0.0, minimum=0, maximum=5),
        Field("top_p", "Top p", float, 1.0, minimum=0, maximum=1),
        Field("seed", "Seed", int, 0, minimum=-(2**63), maximum=2**63 - 1),
        Field("system_prompt", "System prompt", str, "", max_chars=20_000),
        Field("stop", "Stop at", list, (), optional=True),
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", tuple(self.stop))

    def check(self, where: str) -> None:
        if self.top_p <= 0:
            raise SpecError(f"{where}.top_p: must be above 0 and at most 1")
        if not all(self.stop):
            raise SpecError(f"{where}.stop: give a list of non-empty strings")
        if len(self.stop) > MAX_STOPS or any(len(x) > 100 for x in self.stop):
            raise SpecError(f"{where}.stop: at most {MAX_STOPS} strings of up to 100 characters")


Turn = dict  # {"role": "user" | "assistant", "content": str}


@dataclass
class _Loaded:
    model: object  # the base, or a PeftModel wrapping it once an adapter is loaded
    tokenizer: object
    adapters: set[str]  # adapters switched on the shared base, all of peft_type
    task: str = "CAUSAL_LM"
    peft_type: str | None = None
    own: OrderedDict[str, object] = field(default_factory=OrderedDict)  # name -> its own model
    active: str | None = None  # the adapter switched on now
    layers: list | None = None  # the adapter layers, found once per set of loaded adapters


def _activate(loaded: _Loaded, name: str) -> None:
    """Switch the shared base to adapter `name`. PEFT's set_adapter walks every module and
    resets requires_grad (~20 ms on a 135M model, more on larger ones); for answering, setting
    each adapter layer's active adapter is all that changes. Models with auxiliary modules
    (modules_to_save) take PEFT's way."""
    if loaded.active == name:
        return
    if loaded.layers is None:
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils.other import AuxiliaryTrainingWrapper

        modules = list(loaded.model.modules())
        auxiliary = any(isinstance(m, AuxiliaryTrainingWrapper) for m in modules)
        loaded.layers = [] if auxiliary else [m for m in modules if isinstance(m, BaseTunerLayer)]
    if loaded.layers:
        for layer in loaded.layers:
            layer._active_adapter = [name]
        loaded.model.base_model.active_adapter = name
        loaded.model.active_adapter = name  # PeftModel keeps its own copy (as set_adapter does)
    else:
        loaded.model.set_adapter(name)
    loaded.active = name


OWN_MODELS = 2  # models of their own kept per base: enough to compare two side by side


def load_trained(base_path: str, folder: Path, trust_remote_code: bool = False, dtype=None):
    """What a job wrote, as a model to generate with: a PEFT adapter on its base, a full model
    folder, or a base with selected weights replaced."""
    import json

    from finetune.models import load_model
    from finetune.train import LABELS_FILE, SELECTED_WEIGHTS

    labels_file = folder / LABELS_FILE
    labels = json.loads(labels_file.read_text()) if labels_file.exists() else None
    if (folder / "adapter_config.json").exists():
        from peft import PeftModel

        base, _ = load_model(base_path, trust_remote_code, labels=labels, dtype=dtype)
        return PeftModel.from_pretrained(base, str(folder))
    if (folder / SELECTED_WEIGHTS).exists():
        from safetensors.torch import load_file

        model, _ = load_model(base_path, trust_remote_code, labels=labels, dtype=dtype)
        weights = load_file(folder / SELECTED_WEIGHTS)
        missing = set(weights) - set(model.state_dict())
        if missing:
            raise UserError(f"{folder.name}: weights {sorted(missing)[:3]} are not in the base")
        model.load_state_dict(weights, strict=False)
        return model
    return load_model(str(folder), trust_remote_code, dtype=dtype)[0]


def _on_device(model):
    """On the GPU where there is one (a worker's, or the app's): answering there is what the
    bfloat16 it loads in is for."""
    import torch

    return model.to("cuda") if torch.cuda.is_available() else model


def _peft_type(folder: Path) -> str | None:
    import json

    config = folder / "adapter_config.json"
    return json.loads(config.read_text())["peft_type"] if config.exists() else None


class ModelCache:
    """Keeps up to `capacity` base models; all adapters of a base share its one copy. Models of
    their own (another adapter type, soft prompts, full or selective weights) are whole copies
    of the base: at most OWN_MODELS per base, and, with max_bytes, only as many as fit beside
    the bases (the least recently used go first)."""

    def __init__(self, capacity: int = 1, max_bytes: int | None = None):
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._models: OrderedDict[str, _Loaded] = OrderedDict()
        self._lock = threading.Lock()

    def _held_bytes(self) -> int:
        return int(sum(_megabytes(item) for item in self._models.values()) * 2**20)

    def _make_room(self, needed: int) -> None:
        """Drop models of their own, least recently used first, until `needed` more bytes fit
        under max_bytes (or none is left to drop)."""
        while self.max_bytes is not None and self._held_bytes() + needed > self.max_bytes:
            victims = [(item, name) for item in self._models.values() for name in item.own]
            if not victims:
                return
            item, name = victims[0]  # the least recently used base's least recently used
            del item.own[name]
            import gc

            gc.collect()

    def _get(self, model_path: str, trust_remote_code: bool) -> _Loaded:
        if model_path in self._models:
            self._models.move_to_end(model_path)
            return self._models[model_path]
        while len(self._models) >= self.capacity:
            self._models.popitem(last=False)
        from finetune.models import load_model

        model, tokenizer = load_model(model_path, trust_remote_code)
        model = _on_device(model).eval()
        task = model_task(model.config)
        loaded = _Loaded(model=model, tokenizer=tokenizer, adapters=set(), task=task)
        self._models[model_path] = loaded
        return loaded

    def _ensure_adapter(
        self, loaded: _Loaded, name: str, folder: Path, model_path: str, trust: bool
    ) -> None:
        if name in loaded.own:
            loaded.own.move_to_end(name)
            return
        if name in loaded.adapters:
            return
        peft_type = _peft_type(folder)
        # PEFT switches adapters of one type on one base (the registry's shares_base); others
        # (soft prompts, a second type, full or selective weights) get a model of their own.
        method = method_of_type(peft_type)
        shared = method is not None and method.shares_base
        own = not shared or loaded.peft_type not in (None, peft_type)
        if own or loaded.task != CAUSAL_LM:  # a classifier's head is sized by its labels
            while len(loaded.own) >= OWN_MODELS:  # each is a whole copy of the base
                loaded.own.popitem(last=False)
            self._make_room(int(_megabytes(loaded, own=False) * 2**20))
            loaded.own[name] = _on_device(load_trained(model_path, folder, trust)).eval()
            return
        from peft import PeftModel

        try:
            if not loaded.adapters:
                loaded.model = PeftModel.from_pretrained(
                    loaded.model, str(folder), adapter_name=name
                )
            else:
                loaded.model.load_adapter(str(folder), adapter_name=name)
        except BaseException:  # adapter layers may be in the base already: load it afresh
            self._models.pop(model_path, None)
            raise
        loaded.peft_type = peft_type
        loaded.model.eval()
        loaded.adapters.add(name)
        loaded.layers, loaded.active = None, None  # new adapter layers may have been made

    def generate(
        self,
        model_path: str,
        adapters: list[tuple[str, Path] | None],
        prompt: str,
        params: GenerationParams,
        trust_remote_code: bool = False,
    ) -> list[dict]:
        """One answer per entry: None is the base model, (name, folder) an adapter."""
        chat = [{"role": "user", "content": prompt}]
        answers = []
        for entry in adapters:
            *_, last = self.stream(model_path, entry, chat, params, trust_remote_code)
            answers.append(last)
        return answers

    def stream(
        self,
        model_path: str,
        entry: tuple[str, Path] | None,
        chat: list[Turn],
        params: GenerationParams,
        trust_remote_code: bool = False,
    ) -> Iterator[dict]:
        """The answer of the base (None) or one adapter to a chat, as it grows: dicts with the
        text so far; the last one has the final text, seconds and tokens/s. The model stays
        locked to this answer until it is done (no adapter switch under it)."""
        with self.using(model_path, entry, trust_remote_code) as (model, tokenizer, task):
            yield from _answer(model, tokenizer, task, entry, chat, params)

    @contextlib.contextmanager
    def using(
        self, model_path: str, entry: tuple[str, Path] | None, trust_remote_code: bool = False
    ) -> Iterator[tuple[object, object, str]]:
        """(model, tokenizer, task) answering as the base (None) or the adapter, held for this
        caller alone until the block ends."""
        with self._lock:
            loaded = self._get(model_path, trust_remote_code)
            name = None if entry is None else entry[0]
            if entry is not None:
                self._ensure_adapter(loaded, *entry, model_path, trust_remote_code)
            model = loaded.own.get(name) if name is not None else None
            context = contextlib.nullcontext()
            if model is None:
                model = loaded.model
                if name is None and loaded.adapters:
                    context = model.disable_adapter()
                elif name is not None:
                    _activate(loaded, name)
            with context:
                yield model, loaded.tokenizer, loaded.task

    def unload(self) -> int:
        """Drop every loaded model (the memory goes back); returns how many bases were held."""
        with self._lock:
            count = len(self._models)
            self._models.clear()
        import gc

        gc.collect()
        return count

    def loaded(self) -> list[dict]:
        """What is held now: each base with its switched adapters and models of their own."""
        with self._lock:
            return [
                {
                    "base_model": path,
                    "adapters": sorted(item.adapters),
                    "own_models": list(item.own),
                    "megabytes": round(_megabytes(item), 1),
                }
                for path, item in self._models.items()
            ]


def _answer(
    model, tokenizer, task: str, entry, chat: list[Turn], params: GenerationParams
) -> Iterator[dict]:
    import torch

    name = None if entry is None else entry[0]
    if task == SEQ_CLS:
        yield _classify(model, tokenizer, entry, chat[-1]["content"])
        return
    if task == SEQ_2_SEQ_LM:  # the input as trained: the user's text alone
        inputs = tokenizer(chat[-1]["content"], return_tensors="pt").to(model.device)
    else:
        messages = list(chat)
        if params.system_prompt.strip():
            messages.insert(0, {"role": "system", "content": params.system_prompt.strip()})
        inputs = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(model.device)
    torch.manual_seed(params.seed)
    sampling = params.temperature > 0
    prompt_length = 0 if task == SEQ_2_SEQ_LM else inputs["input_ids"].shape[1]
    streamer = _Streamer(tokenizer, prompt_length, task == SEQ_2_SEQ_LM)
    arguments = dict(
        **inputs,
        max_new_tokens=params.max_new_tokens,
        do_sample=sampling,
        temperature=params.temperature if sampling else None,
        top_p=params.top_p if sampling else None,
        top_k=None,
        pad_token_id=tokenizer.pad_token_id
        if tokenizer.pad_token_id is not None
        else tokenizer.eos_token_id,
        streamer=streamer,
    )
    if params.stop:
        arguments.update(stop_strings=list(params.stop), tokenizer=tokenizer)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            with torch.inference_mode():
                model.generate(**arguments)
        except _Cancelled:
            pass
        except BaseException as exc:  # shown to the caller, not lost in the thread
            failure.append(exc)
        finally:
            streamer.close()

    start = time.perf_counter()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        for text in streamer:
            yield {"adapter": name, "text": _cut(text, params.stop), "done": False}
    finally:  # a reader that gives up (a closed page) stops the generation before the model
        streamer.cancelled = True  # is handed to anyone else
        thread.join()
    if failure:
        raise failure[0]
    seconds = time.perf_counter() - start
    tokens = streamer.tokens
    yield {
        "adapter": name,
        "text": _cut(streamer.text(), params.stop),
        "seconds": round(seconds, 3),
        "tokens": tokens,
        "tokens_per_s": round(tokens / seconds, 2) if seconds > 0 else None,
        "done": True,
    }


class _Cancelled(Exception):
    """The reader of a streamed answer went away."""


class _Streamer:
    """Collects new tokens from generate (a streamer: put / end) and hands out the text so far
    to the reading thread, at most one update per new token."""

    def __init__(self, tokenizer, prompt_length: int, seq2seq: bool):
        import queue

        self.tokenizer, self.skip, self.seq2seq = tokenizer, prompt_length, seq2seq
        self.ids: list[int] = []
        self.tokens = 0
        self._queue: queue.Queue = queue.Queue()
        self._first = True
        self.cancelled = False

    def put(self, value) -> None:
        if self.cancelled:  # raised in generate's thread: it ends there
            raise _Cancelled
        ids = value.reshape(-1).tolist()
        if self._first:  # the prompt (decoder-only) or the start token (seq2seq) comes first
            self._first = False
            if self.seq2seq or len(ids) == self.skip:
                return
            ids = ids[self.skip :]
        self.ids.extend(ids)
        self.tokens += len(ids)
        self._queue.put(self.text())

    def end(self) -> None:
        pass

    def __deepcopy__(self, memo) -> _Streamer:  # PEFT deep-copies generate's kwargs for some
        return self  # adapters (seq2seq soft prompts): the copy must still reach the reader

    def close(self) -> None:
        self._queue.put(None)

    def text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True).strip()

    def __iter__(self):
        while (item := self._queue.get()) is not None:
            yield item


def _cut(text: str, stop: tuple[str, ...]) -> str:
    """The text before the first stop string in it (generate stops after writing one)."""
    ends = [text.find(s) for s in stop if s and s in text]
    return text[: min(ends)].rstrip() if ends else text


def _megabytes(loaded: _Loaded, own: bool = True) -> float:
    """What the base (and, with own, its models of their own) hold in parameters."""
    models = [loaded.model, *(loaded.own.values() if own else ())]
    return sum(p.numel() * p.element_size() for m in models for p in m.parameters()) / 2**20


def _classify(model, tokenizer, entry, text: str) -> dict:
    """A classifier's answer: its most likely label and how sure it is."""
    import torch

    name = None if entry is None else entry[0]
    if entry is None:
        return {
            "adapter": None,
            "seconds": 0.0,
            "tokens_per_s": None,
            "text": "(the base encoder has no trained classification head)",
            "done": True,
        }
    start = time.perf_counter()
    with torch.inference_mode():
        logits = model(**tokenizer(text, return_tensors="pt", truncation=True)).logits[0]
    probabilities = torch.softmax(logits.float(), dim=-1)
    best = int(probabilities.argmax())
    labels = model.config.id2label
    return {
        "adapter": name,
        "text": f"{labels.get(best, best)} ({probabilities[best]:.0%})",
        "seconds": round(time.perf_counter() - start, 3),
        "tokens_per_s": None,
        "done": True,
    }
