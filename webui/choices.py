"""The dropdown choices several tabs read from storage: datasets and adapters, by id."""

from __future__ import annotations

import service
from config import Settings


def dataset_choices(settings: Settings) -> list[tuple[str, str]]:
    return [(f"{d['name']} ({d['rows']:,} rows)", d["id"]) for d in service.list_datasets(settings)]


def adapter_choices(settings: Settings) -> list[tuple[str, str]]:
    return [(f"{a['name']} · {a['id']}", a["id"]) for a in service.list_adapters(settings)]
