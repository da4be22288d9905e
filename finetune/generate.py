"""Generation for the playground: one loaded base per model, adapters switched on it by name."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from finetune.tasks import CAUSAL_LM, SEQ_2_SEQ_LM, SEQ_CLS, model_task


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    seed: int = 0
    system_prompt: str = ""


@dataclass
class _Loaded:
    model: object  # the base, or a PeftModel wrapping it once an adapter is loaded
    tokenizer: object
    adapters: set[str]  # adapters switched on the shared base, all of peft_type
    task: str = "CAUSAL_LM"
    peft_type: str | None = None
    own: OrderedDict[str, object] = field(default_factory=OrderedDict)  # name -> its own model


# PEFT can switch between adapters of one of these types on one base; others (soft prompts,
# a second type, full or selective weights) get a model of their own. AdaLoRA too: PEFT 0.21
# cannot load a pruned AdaLoRA adapter under a name other than "default".
SHAREABLE = {"LORA", "LOHA", "LOKR", "IA3"}
OWN_MODELS = 2  # models of their own kept per base: enough to compare two side by side


def load_trained(base_path: str, folder: Path, trust_remote_code: bool = False):
    """What a job wrote, as a model to generate with: a PEFT adapter on its base, a full model
    folder, or a base with selected weights replaced."""
    import json

    from finetune.train import LABELS_FILE, SELECTED_WEIGHTS, load_model

    labels_file = folder / LABELS_FILE
    labels = json.loads(labels_file.read_text()) if labels_file.exists() else None
    if (folder / "adapter_config.json").exists():
        from peft import PeftModel

        base, _ = load_model(base_path, trust_remote_code, labels=labels)
        return PeftModel.from_pretrained(base, str(folder))
    if (folder / SELECTED_WEIGHTS).exists():
        from safetensors.torch import load_file

        model, _ = load_model(base_path, trust_remote_code, labels=labels)
        weights = load_file(folder / SELECTED_WEIGHTS)
        missing = set(weights) - set(model.state_dict())
        if missing:
            raise ValueError(f"{folder.name}: weights {sorted(missing)[:3]} are not in the base")
        model.load_state_dict(weights, strict=False)
        return model
    return load_model(str(folder), trust_remote_code)[0]


def _peft_type(folder: Path) -> str | None:
    import json

    config = folder / "adapter_config.json"
    return json.loads(config.read_text())["peft_type"] if config.exists() else None


class ModelCache:
    """Keeps up to `capacity` base models; all adapters of a base share its one copy."""

    def __init__(self, capacity: int = 1):
        self.capacity = capacity
        self._models: OrderedDict[str, _Loaded] = OrderedDict()
        self._lock = threading.Lock()

    def _get(self, model_path: str, trust_remote_code: bool) -> _Loaded:
        if model_path in self._models:
            self._models.move_to_end(model_path)
            return self._models[model_path]
        while len(self._models) >= self.capacity:
            self._models.popitem(last=False)
        from finetune.train import load_model

        model, tokenizer = load_model(model_path, trust_remote_code)
        model.eval()
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
        own = peft_type not in SHAREABLE or loaded.peft_type not in (None, peft_type)
        if own or loaded.task != CAUSAL_LM:  # a classifier's head is sized by its labels
            while len(loaded.own) >= OWN_MODELS:  # each is a whole copy of the base
                loaded.own.popitem(last=False)
            loaded.own[name] = load_trained(model_path, folder, trust).eval()
            return
        from peft import PeftModel

        loaded.peft_type = peft_type
        if not loaded.adapters:
            loaded.model = PeftModel.from_pretrained(loaded.model, str(folder), adapter_name=name)
        else:
            loaded.model.load_adapter(str(folder), adapter_name=name)
        loaded.model.eval()
        loaded.adapters.add(name)

    def generate(
        self,
        model_path: str,
        adapters: list[tuple[str, Path] | None],
        prompt: str,
        params: GenerationParams,
        trust_remote_code: bool = False,
    ) -> list[dict]:
        """One answer per entry: None is the base model, (name, folder) an adapter."""
        with self._lock:
            loaded = self._get(model_path, trust_remote_code)
            answers = []
            for entry in adapters:  # each answered as soon as loaded: an own model may be
                if entry is not None:  # evicted to make room for the next one
                    self._ensure_adapter(loaded, *entry, model_path, trust_remote_code)
                answers.append(self._answer(loaded, entry, prompt, params))
            return answers

    def _answer(self, loaded: _Loaded, entry, prompt: str, params: GenerationParams) -> dict:
        import contextlib

        import torch

        tokenizer = loaded.tokenizer
        own = loaded.own.get(entry[0]) if entry is not None else None
        model = own if own is not None else loaded.model
        if loaded.task == SEQ_CLS:
            return _classify(model, tokenizer, entry, prompt)
        if loaded.task == SEQ_2_SEQ_LM:  # the input as trained: the user's text alone
            inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
        else:
            messages = [{"role": "user", "content": prompt}]
            if params.system_prompt.strip():
                messages.insert(0, {"role": "system", "content": params.system_prompt.strip()})
            inputs = tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            ).to(model.device)
        context = contextlib.nullcontext()
        if entry is None and loaded.adapters:
            context = model.disable_adapter()
        elif entry is not None and entry[0] in loaded.adapters:
            model.set_adapter(entry[0])
        torch.manual_seed(params.seed)
        sampling = params.temperature > 0
        start = time.perf_counter()
        with context, torch.inference_mode():
            output = model.generate(
                **inputs,
                max_new_tokens=params.max_new_tokens,
                do_sample=sampling,
                temperature=params.temperature if sampling else None,
                top_p=params.top_p if sampling else None,
                top_k=None,
                pad_token_id=tokenizer.pad_token_id
                if tokenizer.pad_token_id is not None
                else tokenizer.eos_token_id,
            )
        seconds = time.perf_counter() - start
        prompt_length = 0 if loaded.task == SEQ_2_SEQ_LM else inputs["input_ids"].shape[1]
        new_tokens = output[0][prompt_length:]
        return {
            "adapter": None if entry is None else entry[0],
            "text": tokenizer.decode(new_tokens, skip_special_tokens=True).strip(),
            "seconds": round(seconds, 3),
            "tokens_per_s": round(len(new_tokens) / seconds, 2) if seconds > 0 else None,
        }


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
    }
