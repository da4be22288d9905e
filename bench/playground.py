"""The playground's costs on the bundled model: switching adapters, mixed batches, merged speed.

    python bench/playground.py                     (4 LoRA adapters: about 3 minutes on 2 cores)
    python bench/playground.py --adapters 3 --tokens 16 --repeats 3

The adapters are LoRA r=16 on q/k/v/o with random weights (what is measured does not depend on
what they learned), made with PEFT on SmolLM2-135M-Instruct, loaded in float32 as the app does
on a CPU (the folder holds bfloat16), one torch thread. Three measures,
each side by side in this one run:
  1. Switch: the playground's way to go from one adapter to another (ModelCache.using on one
     loaded base, every adapter loaded once; PEFT's own set_adapter shown beside it), vs
     loading base + adapter afresh for each answer, as a tool without a shared base does.
     Medians (50 switches, --repeats reloads); goal: switching at least 50x faster.
  2. Mixed batch: N prompts for N different adapters in one generate call (PEFT's
     adapter_names), vs N generate calls, one adapter each. Same prompts, greedy, --tokens new.
  3. Generation tokens/s of one adapter unmerged, merged into the base (merge_and_unload), and
     of the base alone, timed in turn (median of --repeats rounds).
  The mixed batch pads prompts on the left; its answers can differ from one-by-one answers in
  the last bits of the float sums, which greedy decoding may turn into another token.
Prints ratios. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

torch.set_num_threads(1)

MODEL = "SmolLM2-135M-Instruct"
PROMPTS = ["What is 47 + 85?", "Say hello in French.", "Name a prime number.", "What is 9 x 7?"]


def make_adapters(base_path: str, count: int, out: Path) -> list[Path]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folders = []
    for i in range(count):
        torch.manual_seed(i)
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
        config = LoraConfig(
            r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]
        )
        model = get_peft_model(model, config)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.02)
        folders.append(out / f"adapter-{i}")
        model.save_pretrained(folders[-1])
    return folders


def inputs_for(tokenizer, prompts: list[str]):
    tokenizer.padding_side = "left"
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
        )
        for p in prompts
    ]
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def switch_times(base_path: str, folders: list[Path], repeats: int) -> dict[str, float]:
    """Median seconds: the playground's switch (ModelCache.using, every adapter loaded once),
    PEFT's own set_adapter, and loading base + adapter afresh."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from finetune.generate import ModelCache

    cache = ModelCache()
    entries = [(f"a{i}", folder) for i, folder in enumerate(folders)]

    def switch(entry) -> None:
        with cache.using(base_path, entry):
            pass

    for entry in entries:  # each loaded once, as the playground does on first use
        switch(entry)
    order = [entries[k % len(entries)] for k in range(50)]
    ours = [timed(lambda e=entry: switch(e)) for entry in order]
    (held,) = cache._models.values()
    peft = [timed(lambda n=entry[0]: held.model.set_adapter(n)) for entry in order]
    reloads = []
    for k in range(repeats):
        folder = folders[k % len(folders)]
        reloads.append(
            timed(
                lambda f=folder: PeftModel.from_pretrained(
                    AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32), str(f)
                )
            )
        )
    return {
        "ours": statistics.median(ours),
        "peft": statistics.median(peft),
        "reload": statistics.median(reloads),
    }


def mixed_batch(
    base_path: str, folders: list[Path], tokens: int
) -> tuple[float, float, int, float]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_path)
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32),
        str(folders[0]),
        adapter_name="a0",
    )
    for i, folder in enumerate(folders[1:], 1):
        model.load_adapter(str(folder), adapter_name=f"a{i}")
    model.eval()
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(folders))]
    names = [f"a{i}" for i in range(len(folders))]
    settings = {"max_new_tokens": tokens, "min_new_tokens": tokens, "do_sample": False}
    batch = inputs_for(tokenizer, prompts)
    with torch.inference_mode():
        start = time.perf_counter()
        together = model.generate(**batch, adapter_names=names, **settings)
        mixed = time.perf_counter() - start
        alone, same = 0.0, 0
        for i, (prompt, name) in enumerate(zip(prompts, names, strict=True)):
            model.set_adapter(name)
            one = inputs_for(tokenizer, [prompt])
            start = time.perf_counter()
            out = model.generate(**one, **settings)
            alone += time.perf_counter() - start
            mine = together[i][batch["input_ids"].shape[1] :]
            same += tokenizer.decode(mine, skip_special_tokens=True) == tokenizer.decode(
                out[0][one["input_ids"].shape[1] :], skip_special_tokens=True
            )
        # The same padded batch, one adapter at a time, in a single forward: how far the
        # mixed batch's logits are from each adapter's own (float noise, not a wrong adapter).
        logits = model(**batch, adapter_names=names).logits[:, -1]
        gap = 0.0
        for i, name in enumerate(names):
            model.set_adapter(name)
            own = model(**batch).logits[i, -1]
            gap = max(gap, float((logits[i] - own).abs().max()))
    return mixed, alone, same, gap


def speeds(base_path: str, folder: Path, tokens: int, repeats: int) -> dict[str, float]:
    """Tokens/s of the base, the adapter unmerged and merged: three models held at once and
    timed in turn, round after round, so that a slower moment of the machine hits all three."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_path)
    one = inputs_for(tokenizer, [PROMPTS[0]])
    settings = {"max_new_tokens": tokens, "min_new_tokens": tokens, "do_sample": False}

    def adapted():
        return PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32), str(folder)
        )

    models = {
        "base": AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32),
        "unmerged": adapted(),
        "merged": adapted().merge_and_unload(),
    }
    seconds: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            model.eval()
            model.generate(**one, **settings)  # warm-up
        for _ in range(repeats):
            for name, model in models.items():
                seconds[name].append(timed(lambda m=model: m.generate(**one, **settings)))
    return {name: tokens / statistics.median(times) for name, times in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models-dir", default=str(ROOT / "models"))
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    base_path = str(Path(args.models_dir) / MODEL)
    from finetune.quiet import quiet_library_logs

    quiet_library_logs()
    with tempfile.TemporaryDirectory() as tmp:
        folders = make_adapters(base_path, args.adapters, Path(tmp))
        switch = switch_times(base_path, folders, args.repeats)
        print(
            f"switch   playground {switch['ours'] * 1e3:.2f} ms (PEFT set_adapter "
            f"{switch['peft'] * 1e3:.1f} ms)  vs  reload base + adapter {switch['reload']:.2f} s"
            f"  ->  switching is {switch['reload'] / switch['ours']:,.0f}x faster (goal: >= 50x)"
        )
        mixed, alone, same, gap = mixed_batch(base_path, folders, args.tokens)
        print(
            f"batch    {len(folders)} prompts x {len(folders)} adapters in one generate "
            f"{mixed:.2f} s  vs  one by one {alone:.2f} s  ->  {alone / mixed:.2f}x "
            f"({same} of {len(folders)} answers identical to the one-by-one ones; largest "
            f"logit gap to each adapter alone on the same padded batch {gap:.1e})"
        )
        rates = speeds(base_path, folders[0], args.tokens, args.repeats)
        print(
            f"tokens/s base {rates['base']:.1f}  unmerged {rates['unmerged']:.1f}  merged "
            f"{rates['merged']:.1f}  ->  unmerged costs {rates['base'] / rates['unmerged']:.2f}x "
            f"the base's time per token, merged {rates['base'] / rates['merged']:.2f}x"
        )


if __name__ == "__main__":
    main()
