"""Model cards: README.md with the Hub's metadata (huggingface_hub's ModelCard) and a snippet
that loads what was written for its task, plus recipe.json (the spec that made a trained one)."""

from __future__ import annotations

import json
from pathlib import Path

from finetune.methods import get_method
from finetune.spec import JobSpec
from finetune.tasks import AUTO_CLASSES, CAUSAL_LM, SEQ_2_SEQ_LM, SEQ_CLS
from finetune.train import LABELS_FILE, SELECTED_WEIGHTS

CARD = "README.md"
RECIPE = "recipe.json"
TEMPLATE = "---\n{{ card_data }}\n---\n# {{ title }}\n\n{{ body }}\n"
# The Hub's pipeline tag of each task.
PIPELINE_TAGS = {
    CAUSAL_LM: "text-generation",
    SEQ_2_SEQ_LM: "text2text-generation",
    SEQ_CLS: "text-classification",
}


def write_card(
    folder: Path,
    title: str,
    base_model: str,
    body: str,
    tags: tuple[str, ...] = (),
    task: str | None = None,
    library: str = "peft",
) -> None:
    """README.md of an adapter or model folder, with the metadata the Hub reads (task: the
    model's, for the Hub's pipeline tag; None where it is not known)."""
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(
        base_model=base_model,
        library_name=library,
        pipeline_tag=PIPELINE_TAGS[task] if task else None,
        tags=["adapterlab", *tags],
    )
    card = ModelCard.from_template(data, template_str=TEMPLATE, title=title, body=body.strip())
    (folder / CARD).write_text(card.content, encoding="utf-8")


def write_model_card(
    out_dir: Path,
    spec: JobSpec,
    result,
    base_path: str,
    dataset_label: str,
    final: dict[str, float],
    system_prompt: str,
    task: str = CAUSAL_LM,
) -> None:
    """The card of a training run's output (result: its TrainResult), and its recipe."""
    writes = get_method(spec.method).writes
    metrics = "\n".join(f"- {k}: {v:.4g}" for k, v in final.items()) or "- (none recorded)"
    params = "\n".join(f"- {k}: {v}" for k, v in spec.method_params.items())
    training = "\n".join(f"- {k}: {v}" for k, v in spec.training.items() if v is not None)
    pct = 100 * result.trainable_params / max(result.total_params, 1)
    system_note = ""
    if system_prompt and task == CAUSAL_LM:
        system_note = f" Its training prompts had the system message {json.dumps(system_prompt)}."
    body = f"""A {spec.method} adapter for `{spec.base_model}`, trained with AdapterLab on
{dataset_label}.

Trainable parameters: {result.trainable_params:,} of {result.total_params:,} ({pct:.3f}%).
Steps: {result.step} of {result.total_steps}{" (stopped early)" if result.stopped else ""}.

## Method parameters
{params}

## Training
{training}

## Final metrics
{metrics}

## Load it
Trained on the base model at `{base_path}` in {result.dtype}; load it the same way to get the
answers AdapterLab's playground gives.{system_note}
```python
{load_snippet(writes, base_path, result.dtype, task, system_prompt)}
```
"""
    write_card(
        out_dir,
        spec.name or "AdapterLab adapter",
        spec.base_model,
        body,
        tags=(spec.method,),
        task=task,
        library="peft" if writes == "adapter" else "transformers",
    )
    (out_dir / RECIPE).write_text(spec.to_json() + "\n", encoding="utf-8")


def load_snippet(
    writes: str, base_path: str, dtype: str, task: str = CAUSAL_LM, system_prompt: str = ""
) -> str:
    """Python that loads what a run wrote ("path/to/this/folder") and asks it one question."""
    auto = AUTO_CLASSES[task]
    lines = ["import torch", f"from transformers import {auto}, AutoTokenizer"]
    labels = ""
    if task == SEQ_CLS:  # the head's outputs, in order
        lines += ["import json", f'labels = json.load(open("path/to/this/folder/{LABELS_FILE}"))']
        labels = ", num_labels=len(labels)"
    if writes == "model":
        lines += [
            'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
            f'model = {auto}.from_pretrained("path/to/this/folder", dtype=torch.{dtype})',
        ]
    else:
        lines += [
            f'tokenizer = AutoTokenizer.from_pretrained("{base_path}")',
            f'model = {auto}.from_pretrained("{base_path}", dtype=torch.{dtype}{labels})',
        ]
        if writes == "tensors":
            lines += [
                "from safetensors.torch import load_file",
                "weights = load_file(",
                f'    "path/to/this/folder/{SELECTED_WEIGHTS}")',
                "model.load_state_dict(weights, strict=False)",
            ]
        else:
            lines += [
                "from peft import PeftModel",
                'model = PeftModel.from_pretrained(model, "path/to/this/folder")',
            ]
    return "\n".join(lines + _ask(task, system_prompt))


def _ask(task: str, system_prompt: str) -> list[str]:
    if task == CAUSAL_LM:
        system = (
            f'{{"role": "system", "content": {json.dumps(system_prompt)}}}, '
            if system_prompt
            else ""
        )
        return [
            f'messages = [{system}{{"role": "user", "content": "..."}}]',
            "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True,",
            '                                       return_dict=True, return_tensors="pt")',
            "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=64)[0]))",
        ]
    if task == SEQ_2_SEQ_LM:
        return [
            'inputs = tokenizer("...", return_tensors="pt")',
            "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=64)[0],",
            "                       skip_special_tokens=True))",
        ]
    return [
        'inputs = tokenizer("...", return_tensors="pt")',
        "print(labels[model(**inputs).logits.argmax(-1).item()])",
    ]


def final_metrics(history: list[dict]) -> dict[str, float]:
    """The last loss and eval loss a run logged."""
    final: dict[str, float] = {}
    for entry in history:
        for key in ("loss", "eval_loss"):
            if entry.get(key) is not None:
                final[key] = entry[key]
    return final
