"""The service layer: every user action as one plain function, the one place where it happens.

The tabs, the named API endpoints and the benchmarks call these; each takes the Settings and
plain values, returns plain data, and raises errors.UserError with a message meant for the user
(webui.errors shows it as it is; anything else is an internal error). Below this: jobs,
finetune and storage.
"""

from service.adapters import (
    download_adapter,
    import_adapter,
    list_adapters,
    push_to_hub,
)
from service.combining import CombineRequest, combine, combined_adapter, start_combine
from service.datasets import (
    DEFAULT_MAX_LENGTH,
    delete_dataset,
    get_dataset,
    list_datasets,
    preview_dataset,
)
from service.evaluation import evaluation_results, start_evaluation, tradeoffs
from service.jobs import (
    JobView,
    cancel_job,
    clone_job,
    delete_job,
    job_log,
    job_samples,
    job_status,
    job_view,
    list_jobs,
    move_job,
    resume_job,
    retry_job,
    set_priority,
)
from service.merging import download_merged, merged_models, start_merge
from service.playground import (
    MAX_ADAPTERS,
    compare,
    entries,
    generate,
    generation_params,
    memory_bound,
    stream_answer,
    training_system_prompt,
    unload,
)
from service.training import estimate, list_methods, start_job
from service.uploads import UploadOptions, add_sample, inspect_columns, upload_dataset

__all__ = [
    "DEFAULT_MAX_LENGTH",
    "MAX_ADAPTERS",
    "CombineRequest",
    "JobView",
    "UploadOptions",
    "add_sample",
    "cancel_job",
    "clone_job",
    "combine",
    "combined_adapter",
    "compare",
    "delete_dataset",
    "delete_job",
    "download_adapter",
    "download_merged",
    "entries",
    "estimate",
    "evaluation_results",
    "generate",
    "generation_params",
    "get_dataset",
    "import_adapter",
    "inspect_columns",
    "job_log",
    "job_samples",
    "job_status",
    "job_view",
    "list_adapters",
    "list_datasets",
    "list_jobs",
    "list_methods",
    "memory_bound",
    "merged_models",
    "move_job",
    "preview_dataset",
    "push_to_hub",
    "resume_job",
    "retry_job",
    "set_priority",
    "start_combine",
    "start_evaluation",
    "start_job",
    "start_merge",
    "stream_answer",
    "tradeoffs",
    "training_system_prompt",
    "unload",
    "upload_dataset",
]
