"""The named API endpoints (gradio_client): each calls the same action the UI uses."""

from __future__ import annotations

import functools
import inspect
from typing import Any

import gradio as gr

import service
from config import Settings
from webui.errors import guarded


def start_job(settings: Settings, spec: dict) -> dict:
    """Validate a job spec and queue it -> {job_id, status, trainable_params, ...}."""
    return service.start_job(settings, spec)


def estimate(settings: Settings, spec: dict) -> dict:
    """Trainable and total parameters of a spec and the adapter's size, exact, without
    loading weights."""
    return service.estimate(settings, spec)


def list_methods(settings: Settings) -> list:
    """Every method: id, label, family, description, peft_type, can_merge, can_combine,
    combinations, shares_base, can_import, imports_as, tasks, learning_rate, fields."""
    return service.list_methods()


def job_status(settings: Settings, job_id: str) -> dict:
    """{job_id, status, position, step, total_steps, loss, eval_loss, error, adapter_id,
    checkpoint, resumable, heartbeat_at, worker, ...}."""
    return service.job_status(settings, job_id)


def cancel_job(settings: Settings, job_id: str) -> dict:
    """Cancel a queued job, or stop a running one after its current step (checkpointed)."""
    return service.cancel_job(settings, job_id)


def list_jobs(settings: Settings, state: str | None = None) -> list:
    """Every job, newest first, as job_status gives it; state keeps one state only."""
    return service.list_jobs(settings, state)


def set_priority(settings: Settings, job_id: str, priority: int) -> dict:
    """A queued job's priority: higher runs first, equal ones oldest first."""
    return service.set_priority(settings, job_id, priority)


def resume_job(settings: Settings, job_id: str) -> dict:
    """Queue a stopped job again from its last checkpoint, to the same final step."""
    return service.resume_job(settings, job_id)


def retry_job(settings: Settings, job_id: str) -> dict:
    """Start a failed, cancelled or interrupted job again from scratch, as a new job."""
    return service.retry_job(settings, job_id)


def clone_job(settings: Settings, job_id: str) -> dict:
    """The job's spec, to change and pass to start_job -> {job_id, spec}."""
    return service.clone_job(settings, job_id)


def delete_job(settings: Settings, job_id: str) -> dict:
    """Delete a job that is not running, with its log, checkpoints and curves; an adapter
    it wrote stays."""
    return service.delete_job(settings, job_id)


def job_log(settings: Settings, job_id: str, lines: int = 100) -> dict:
    """The last lines of the job's log -> {job_id, lines}."""
    return service.job_log(settings, job_id, lines)


def job_samples(settings: Settings, job_id: str) -> list:
    """Answers to the fixed sample prompts so far: [{step, prompt, text}], step 0 = base."""
    return service.job_samples(settings, job_id)


def list_datasets(settings: Settings) -> list:
    """Every dataset: {id, name, format, rows, eval_rows, dropped_rows, mapping, stats, ...}."""
    return service.list_datasets(settings)


def preview_dataset(
    settings: Settings, dataset_id: str, base_model: str = "", max_length: int = 0
) -> dict:
    """The first examples as training sees them with base_model's chat template (loss
    tokens marked), the token-length histogram and stats; max_length 0 = the default."""
    return service.preview_dataset(settings, dataset_id, base_model, max_length)


def delete_dataset(settings: Settings, dataset_id: str) -> dict:
    """Delete a dataset unless a queued, running or interrupted job needs it -> {deleted}."""
    return service.delete_dataset(settings, dataset_id)


def list_adapters(settings: Settings) -> list:
    """Every adapter: {id, name, base_model, method, origin (trained, combined, imported),
    trainable_params, total_params, size_bytes, job_id, created_at}."""
    return service.list_adapters(settings)


def combine_adapters(
    settings: Settings,
    adapter_ids: list[str],
    weights: list[float],
    method: str = "cat",
    name: str = "",
    density: float | None = None,
    svd_rank: int | None = None,
) -> dict:
    """A new adapter from LoRA (or IA3) adapters of one base, by weight; method: linear, cat,
    svd, ties, ties_svd, dare_linear, dare_ties, dare_linear_svd, dare_ties_svd,
    magnitude_prune, magnitude_prune_svd -> {adapter_id, r, ...}."""
    request = _combine_request(adapter_ids, weights, method, name, density, svd_rank)
    return service.combine(settings, request)


def start_combine(
    settings: Settings,
    adapter_ids: list[str],
    weights: list[float],
    method: str = "cat",
    name: str = "",
    density: float | None = None,
    svd_rank: int | None = None,
) -> dict:
    """As combine_adapters, but only queue the job -> {job_id, status}; the new adapter's id is
    the finished job's adapter_id (job_status)."""
    request = _combine_request(adapter_ids, weights, method, name, density, svd_rank)
    return service.start_combine(settings, request)


def _combine_request(adapter_ids, weights, method, name, density, svd_rank):
    return service.CombineRequest.parse(
        {"adapter_ids": adapter_ids, "weights": weights, "method": method, "name": name}
        | {"density": density, "svd_rank": svd_rank}
    )


def add_sample(settings: Settings, sample: str) -> dict:
    """Store a bundled sample as a dataset: arithmetic, chatterbot, topics, doc_titles."""
    return service.add_sample(settings, sample)


def generate(
    settings: Settings,
    base_model: str,
    adapter_ids: list[str | None],
    prompt: str,
    params: dict | None = None,
) -> dict:
    """Answers of the base (null) and each adapter -> {outputs: [{adapter, text, ...}]}."""
    return service.generate(settings, base_model, adapter_ids, prompt, params)


def compare(
    settings: Settings,
    prompt: str,
    adapter_ids: list[str | None],
    params: dict | None = None,
    base_model: str = "",
) -> dict:
    """The base (null) and up to four adapters of one base answer the prompt with the same
    params (max_new_tokens, temperature, top_p, seed, system_prompt, stop) -> {outputs:
    [{adapter, text, seconds, tokens, tokens_per_s}]}; base_model only when no adapter."""
    return service.compare(settings, prompt, adapter_ids, params, base_model or None)


def push_to_hub(settings: Settings, adapter_id: str, repo_id: str, private: bool = True) -> dict:
    """Upload the adapter folder to a Hub model repo (owner/name) with the configured token
    -> {repo_id, url}; a clear error when no token is set or the Hub is unreachable."""
    return service.push_to_hub(settings, adapter_id, repo_id, private)


def evaluate(
    settings: Settings, adapter_ids: list[str | None], dataset_id: str, options: dict | None = None
) -> dict:
    """Queue an evaluation: the base (null) and adapters answer the dataset's held-out rows,
    scored by options.metric (auto, exact_match, accuracy, rouge, perplexity); options also
    max_rows, max_new_tokens, eval_fraction, seed, base_model, name -> {job_id, metric,
    rows}."""
    return service.start_evaluation(settings, adapter_ids, dataset_id, options)


def evaluation_results(settings: Settings, job_id: str) -> dict:
    """{job_id, status, step, total_steps, metric, summary: [{adapter, <metric>, rows,
    seconds}], examples: [{index, prompt, reference, answers: [{adapter, text, score}]}]}."""
    return service.evaluation_results(settings, job_id)


def merge_adapter(settings: Settings, adapter_id: str, dtype: str = "float32") -> dict:
    """Queue a job merging the adapter into its base (float32, bfloat16 or float16), saved
    as sharded safetensors and checked against the adapter model -> {job_id}."""
    return service.start_merge(settings, adapter_id, dtype)


def tradeoffs(settings: Settings, adapter_ids: list[str]) -> list:
    """The PEFT trade-offs, one row per adapter: trainable_params, trainable_percent,
    size_bytes, peak_memory_mb, train_seconds, train_tokens_per_s, metric, metric_value,
    inference_overhead (answer time over the base's in its newest evaluation)."""
    return service.tradeoffs(settings, adapter_ids)


def unload_models(settings: Settings) -> dict:
    """Free the playground's loaded models -> {unloaded, loaded}."""
    return service.unload()


# The endpoints that take and return plain JSON, in the order the API page lists them.
ENDPOINTS = (
    start_job,
    estimate,
    list_methods,
    job_status,
    cancel_job,
    list_jobs,
    set_priority,
    resume_job,
    retry_job,
    clone_job,
    delete_job,
    job_log,
    job_samples,
    list_datasets,
    preview_dataset,
    delete_dataset,
    list_adapters,
    combine_adapters,
    start_combine,
    add_sample,
    generate,
    compare,
    unload_models,
    evaluate,
    evaluation_results,
    merge_adapter,
    tradeoffs,
    push_to_hub,
)


def register_api(settings: Settings) -> None:
    """Call inside the Blocks context: each endpoint, bound to the settings."""
    for endpoint in ENDPOINTS:
        gr.api(guarded(bind(settings, endpoint)), api_name=endpoint.__name__)
    _register_file_endpoints(settings)


def bind(settings: Settings, endpoint):
    """The endpoint without its first argument (the settings), as Gradio documents it."""

    @functools.wraps(endpoint)
    def bound(*args, **kwargs):
        return endpoint(settings, *args, **kwargs)

    signature = inspect.signature(endpoint)
    bound.__signature__ = signature.replace(parameters=list(signature.parameters.values())[1:])
    bound.__annotations__ = {k: v for k, v in endpoint.__annotations__.items() if k != "settings"}
    return bound


def _register_file_endpoints(settings: Settings) -> None:
    """Endpoints that take or return a file need file components; they stay out of sight."""

    with gr.Column(visible=False):
        files_in = gr.File(type="filepath", file_count="multiple")
        name_in = gr.Textbox()
        options_in = gr.JSON()
        eval_in = gr.File(type="filepath", file_count="multiple")
        info_out = gr.JSON()
        adapter_in = gr.Textbox()
        zip_out = gr.File()
        upload_button = gr.Button()
        download_button = gr.Button()
        job_in = gr.Textbox()
        merged_out = gr.File()
        merged_button = gr.Button()
        zip_in = gr.File(type="filepath")
        base_in = gr.Textbox()
        import_button = gr.Button()

    def upload_dataset(
        files: list[str] | None,
        name: str = "",
        options: dict | None = None,
        eval_files: list[str] | None = None,
    ) -> dict[str, Any]:
        """Files (CSV, TSV, JSON, JSONL, Parquet, text, or a .zip / .gz of them) -> the dataset's
        info plus `bad_rows`; options: format, mapping, on_bad_rows, labels, text_mode,
        base_model, max_length, hub_id, hub_split, hub_subset."""
        return service.upload_dataset(settings, files, name, options, eval_files)

    def download_adapter(adapter_id: str) -> str:
        """The adapter folder as a .zip file."""
        return str(service.download_adapter(settings, adapter_id))

    upload_button.click(
        guarded(upload_dataset),
        [files_in, name_in, options_in, eval_in],
        info_out,
        api_name="upload_dataset",
    )
    download_button.click(
        guarded(download_adapter),
        [adapter_in],
        zip_out,
        api_name="download_adapter",
    )

    def import_adapter(file: str | None, base_model: str, name: str = "") -> dict[str, Any]:
        """A PEFT adapter folder as a .zip (safetensors only), checked against base_model ->
        {adapter_id, peft_type, method, trainable_params, warnings, ignored_files, ...}."""
        return service.import_adapter(settings, file, base_model, name or None)

    import_button.click(
        guarded(import_adapter),
        [zip_in, base_in, name_in],
        info_out,
        api_name="import_adapter",
    )

    def download_merged(job_id: str) -> str:
        """A finished merge job's model folder as a .zip file."""
        return str(service.download_merged(settings, job_id))

    merged_button.click(guarded(download_merged), [job_in], merged_out, api_name="download_merged")
