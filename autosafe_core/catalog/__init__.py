"""The catalog: ToolEmu-format toolkits and the open risk-outcome taxonomy, as data.

`default_catalog()` is what ships in this folder; `load_catalog` and `validate_path`
read anyone's files, ToolEmu's included.
"""

from autosafe_core.catalog.data import packaged_outcomes, packaged_root
from autosafe_core.catalog.loader import (
    CatalogError,
    CatalogFiles,
    default_catalog,
    load_catalog,
    normalise_outcome,
    read_catalog_files,
    validate_path,
)
from autosafe_core.catalog.lookup import Catalog, UnknownName, outcome_key
from autosafe_core.catalog.prompt_spec import render_toolkits

__all__ = [
    "Catalog",
    "CatalogError",
    "CatalogFiles",
    "UnknownName",
    "default_catalog",
    "load_catalog",
    "normalise_outcome",
    "outcome_key",
    "packaged_outcomes",
    "packaged_root",
    "read_catalog_files",
    "render_toolkits",
    "validate_path",
]
