"""The whole UI: one tab per module, the named API, and the refreshes between tabs."""

from __future__ import annotations

import gradio as gr

import service
from config import Settings
from webui.adapters_tab import build_adapters_tab
from webui.api import register_api
from webui.choices import dataset_choices
from webui.compare_tab import build_compare_tab
from webui.data_tab import build_data_tab, datasets_rows
from webui.errors import guard_events
from webui.jobs_tab import build_jobs_tab
from webui.playground_tab import build_playground_tab, on_playground_select
from webui.train_tab import adapter_start_choices, build_train_tab, fill_form, on_form_change

THEME = gr.themes.Soft(primary_hue="orange")


def build_app(settings: Settings) -> gr.Blocks:
    with gr.Blocks(title="AdapterLab") as app:
        gr.Markdown(
            "# AdapterLab\nFine-tune a model with PEFT: data → train → jobs → try → download."
        )
        with gr.Tabs() as tabs:
            with gr.Tab("Data", id="data"):
                data = build_data_tab(settings)
            with gr.Tab("Train", id="train") as train_tab:
                form = build_train_tab(settings)
            with gr.Tab("Jobs", id="jobs"):
                jobs = build_jobs_tab(settings)
            with gr.Tab("Playground", id="playground") as playground_tab:
                playground = build_playground_tab(settings)
            with gr.Tab("Compare", id="compare") as compare_tab:
                compare = build_compare_tab(settings)
            with gr.Tab("Adapters", id="adapters") as adapters_tab:
                adapters = build_adapters_tab(settings)
        register_api(settings)

        # Each tab reads storage when shown, so what another tab (or browser) did appears.
        train_tab.select(
            lambda current, start: (
                _refresh_choices(dataset_choices(settings), current),
                _refresh_choices(adapter_start_choices(settings), start),
            ),
            inputs=[form.dataset, form.from_adapter],
            outputs=[form.dataset, form.from_adapter],
            api_visibility="private",
        )

        def on_clone_click(job_id: str | None) -> dict:
            """The Train form filled with the job's spec, shown; the user edits and starts."""
            spec = service.clone_job(settings, job_id)["spec"] if job_id else {}
            return {tabs: gr.Tabs(selected="train"), **fill_form(settings, form, spec)}

        jobs.clone_button.click(
            on_clone_click,
            inputs=[jobs.job_dropdown],
            outputs=[tabs, *form.inputs()],
            api_visibility="private",
        )
        playground_tab.select(
            lambda current: on_playground_select(settings, current),
            inputs=[playground.adapter_dropdown],
            outputs=[playground.adapter_dropdown],
            api_visibility="private",
        )
        adapters_tab.select(**adapters.refresh)
        compare_tab.select(**compare.refresh)
        app.load(**adapters.refresh)
        app.load(
            lambda: (datasets_rows(settings), gr.update(choices=dataset_choices(settings))),
            outputs=[data.datasets_table, data.dataset_dropdown],
            api_visibility="private",
        )
        app.load(
            lambda data: on_form_change(settings, form, data),
            inputs=form.inputs(),
            outputs=[form.counts_md],
            api_visibility="private",
        )
    guard_events(app)  # a user's mistake shows its message; a bug, a reference to the log
    return app


def _refresh_choices(choices: list[tuple[str, str]], current: str | None):
    values = [value for _, value in choices]
    if current not in values:
        current = values[0] if values else None
    return gr.update(choices=choices, value=current)
